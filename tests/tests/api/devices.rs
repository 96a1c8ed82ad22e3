//! Devices through the API: create, read, change, page through, delete; bad input refused
//! with its own code and nothing stored.

use fleetwave_tests::harness::app::{Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::on_both_backends;

on_both_backends!(crud_and_cursor_pagination, |backend: Backend| async move {
    let app = TestApp::spawn(backend).await.unwrap();
    for i in (0..25).rev() {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": format!("pi-{i:04}"), "hardware": "rpi4", "serial": format!("SN{i}"),
                            "attributes": {"site": if i % 2 == 0 { "sg-1" } else { "de-2" }, "rack": i}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/devices?limit=10&cursor={c}"),
            None => "/v1/devices?limit=10".to_owned(),
        };
        let (status, page) = app.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for d in page["items"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("pi-{i:04}")).collect();
    assert_eq!(seen, expected, "every device once, in id order");

    let (status, d) = app
        .call(
            Method::PATCH,
            "/v1/devices/pi-0003",
            Some(json!({"attributes": {"site": "us-3"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["attributes"], json!({"site": "us-3"}));
    assert_eq!(d["serial"], "SN3");
    let (_, again) = app.call(Method::GET, "/v1/devices/pi-0003", None).await;
    assert_eq!(again, d, "what was returned is what is stored");

    let (status, _) = app.call(Method::DELETE, "/v1/devices/pi-0003", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.call(Method::GET, "/v1/devices/pi-0003", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = app.call(Method::DELETE, "/v1/devices/pi-0003", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, filtered) = app
        .call(Method::GET, "/v1/devices?hardware=rpi5", None)
        .await;
    assert_eq!(filtered["items"], json!([]));
});

on_both_backends!(
    bad_input_is_refused_with_its_code,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        let cases = [
            (
                json!({"id": "pi/1", "hardware": "rpi4"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "pi-1", "hardware": "RPi 4"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "pi-1", "hardware": "rpi4", "attributes": {"a b": 1}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "pi-1", "hardware": "rpi4", "attributes": {"nested": {"x": 1}}}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"id": "pi-1", "hardware": "rpi4", "colour": "red"}),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                json!({"hardware": "rpi4"}),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                json!({"id": "pi-1", "hardware": "rpi4", "attributes": {"site": "a\u{0}b"}}),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
        ];
        for (body, status, code) in cases {
            let (got, answer) = app
                .call(Method::POST, "/v1/devices", Some(body.clone()))
                .await;
            assert_eq!(
                (got, answer["error"]["code"].as_str()),
                (status, Some(code)),
                "{body} → {answer}"
            );
        }
        let not_json = app
            .request(Method::POST, "/v1/devices", Some(&app.admin_token))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
        let huge = app
            .request(Method::POST, "/v1/devices", Some(&app.admin_token))
            .body(vec![b' '; 2 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let (_, list) = app.call(Method::GET, "/v1/devices", None).await;
        assert_eq!(list["items"], json!([]), "nothing was stored");
        let (status, body) = app.call(Method::GET, "/v1/devices?limit=0", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        for (uri, code) in [
            ("/v1/devices?cursor=a%00b", "invalid_query"),
            ("/v1/devices?limit=x", "invalid_query"),
            ("/v1/devices/pi%00", "invalid_query"),
        ] {
            let (status, body) = app.call(Method::GET, uri, None).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some(code)),
                "{uri} → {body}"
            );
        }

        let (status, _) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": "pi-1", "hardware": "rpi4"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": "pi-1", "hardware": "rpi5"})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("already_exists"))
        );
    }
);
