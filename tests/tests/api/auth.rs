//! Roles at the edge: every route of the OpenAPI document answers 401 without a token, and
//! every mutating route answers 403 to an auditor.

use fleetwave_tests::harness::app::{Backend, TestApp};
use reqwest::{Method, StatusCode};

use crate::on_both_backends;

/// Routes anyone may call: probes, the API document, and signed download URLs.
const PUBLIC: [&str; 4] = [
    "/v1/health",
    "/v1/ready",
    "/v1/openapi.json",
    "/v1/objects/x",
];

/// Every (method, concrete path) the OpenAPI document lists.
fn routes() -> Vec<(Method, String)> {
    let doc = fleetwave::api::openapi();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let concrete = path
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{key}", "x");
        for (method, op) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ] {
            if op.is_some() {
                routes.push((method, concrete.clone()));
            }
        }
    }
    assert!(routes.len() >= 8, "the document lists the routes");
    routes
}

on_both_backends!(
    missing_token_is_401_and_auditor_mutation_is_403,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        let auditor = app.token("auditor").await;
        let release = app.token("release").await;
        for (method, path) in routes() {
            if PUBLIC.contains(&path.as_str()) {
                continue;
            }
            let anonymous = app
                .request(method.clone(), &path, None)
                .send()
                .await
                .unwrap();
            assert_eq!(
                anonymous.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            let wrong = app
                .request(method.clone(), &path, Some("fwt_not-a-token"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                wrong.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a bad token"
            );
            if method != Method::GET {
                let response = app
                    .request(method.clone(), &path, Some(&auditor))
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::FORBIDDEN,
                    "{method} {path} as auditor"
                );
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "forbidden");
            }
        }
        // Only admins create tokens.
        let (status, body) = app
            .call_as(
                &release,
                Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"name": "x", "role": "admin"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        // Auditors read.
        let (status, _) = app
            .call_as(&auditor, Method::GET, "/v1/devices", None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
);
