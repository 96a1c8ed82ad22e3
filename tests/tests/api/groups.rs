//! Groups on both databases: dynamic groups select exactly the devices their query matches
//! (checked against the same rule evaluated in Rust), late joiners appear at once, static
//! groups keep their members, and malformed queries name the column at fault.

use fleetwave_tests::harness::app::{Backend, TestApp, record_firmware};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::on_both_backends;

struct Spec {
    id: &'static str,
    hardware: &'static str,
    site: Option<&'static str>,
    rack: Option<i64>,
    beta: Option<bool>,
    firmware: Option<&'static str>,
}

const FLEET: [Spec; 10] = [
    Spec {
        id: "d00",
        hardware: "rpi4",
        site: Some("sg-1"),
        rack: Some(1),
        beta: None,
        firmware: Some("1.9.0"),
    },
    Spec {
        id: "d01",
        hardware: "rpi4",
        site: Some("sg-1"),
        rack: Some(4),
        beta: Some(true),
        firmware: Some("1.10.0"),
    },
    Spec {
        id: "d02",
        hardware: "rpi4",
        site: Some("de-2"),
        rack: Some(7),
        beta: Some(false),
        firmware: Some("2.0.0"),
    },
    Spec {
        id: "d03",
        hardware: "rpi5",
        site: Some("sg-1"),
        rack: None,
        beta: None,
        firmware: Some("2.0.0-rc.1"),
    },
    Spec {
        id: "d04",
        hardware: "rpi5",
        site: None,
        rack: Some(3),
        beta: Some(true),
        firmware: None,
    },
    Spec {
        id: "d05",
        hardware: "rpi4",
        site: None,
        rack: None,
        beta: None,
        firmware: Some("0.9.0"),
    },
    Spec {
        id: "d06",
        hardware: "rpi5",
        site: Some("de-2"),
        rack: Some(12),
        beta: None,
        firmware: Some("1.2.0"),
    },
    Spec {
        id: "d07",
        hardware: "cm4",
        site: Some("sg-1"),
        rack: Some(2),
        beta: Some(false),
        firmware: Some("3.0.0"),
    },
    Spec {
        id: "d08",
        hardware: "rpi4",
        site: Some("sg-1"),
        rack: Some(5),
        beta: None,
        firmware: None,
    },
    Spec {
        id: "d09",
        hardware: "cm4",
        site: Some("us-3"),
        rack: Some(4),
        beta: Some(true),
        firmware: Some("1.0.0"),
    },
];

fn v(s: &str) -> semver::Version {
    s.parse().unwrap()
}

async fn register(app: &TestApp) {
    for d in &FLEET {
        let mut attributes = serde_json::Map::new();
        if let Some(s) = d.site {
            attributes.insert("site".into(), s.into());
        }
        if let Some(r) = d.rack {
            attributes.insert("rack".into(), r.into());
        }
        if let Some(b) = d.beta {
            attributes.insert("beta".into(), b.into());
        }
        // A string that looks like a number must not match numeric comparisons.
        attributes.insert("label".into(), "4".into());
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": d.id, "hardware": d.hardware, "attributes": attributes})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        if let Some(f) = d.firmware {
            record_firmware(&app.db, d.id, &v(f)).await;
        }
    }
}

async fn ids(app: &TestApp, path: &str) -> Vec<String> {
    let (status, page) = app.call(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

fn expect(rule: impl Fn(&Spec) -> bool) -> Vec<String> {
    FLEET
        .iter()
        .filter(|d| rule(d))
        .map(|d| d.id.to_owned())
        .collect()
}

fn fw(d: &Spec) -> Option<semver::Version> {
    d.firmware.map(v)
}

on_both_backends!(
    dynamic_groups_select_exactly_their_devices_in_sql,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        register(&app).await;
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                r#"hardware = "rpi4" and attributes.site = "sg-1" and firmware < "2.0.0""#,
                expect(|d| {
                    d.hardware == "rpi4"
                        && d.site == Some("sg-1")
                        && fw(d).is_some_and(|f| f < v("2.0.0"))
                }),
            ),
            (
                r#"attributes.rack > 3"#,
                expect(|d| d.rack.is_some_and(|r| r > 3)),
            ),
            (r#"attributes.label > 3"#, vec![]),
            (r#"attributes.label = "4""#, expect(|_| true)),
            (
                r#"attributes.site != "sg-1""#,
                expect(|d| d.site.is_some_and(|s| s != "sg-1")),
            ),
            (r#"not hardware = "rpi4""#, expect(|d| d.hardware != "rpi4")),
            (
                r#"attributes.beta = true"#,
                expect(|d| d.beta == Some(true)),
            ),
            (
                r#"attributes.beta != true"#,
                expect(|d| d.beta == Some(false)),
            ),
            (
                r#"firmware >= "1.10.0""#,
                expect(|d| fw(d).is_some_and(|f| f >= v("1.10.0"))),
            ),
            (
                r#"firmware < "2.0.0""#,
                expect(|d| fw(d).is_some_and(|f| f < v("2.0.0"))),
            ),
            (
                r#"(hardware = "rpi5" or attributes.site = "de-2") and not attributes.rack >= 10"#,
                expect(|d| {
                    (d.hardware == "rpi5" || d.site == Some("de-2"))
                        && d.rack.is_some_and(|r| r < 10)
                }),
            ),
            (
                r#"id >= "d05" and id < "d08""#,
                expect(|d| ("d05".."d08").contains(&d.id)),
            ),
        ];
        for (n, (query, expected)) in cases.iter().enumerate() {
            let name = format!("g{n}");
            let (status, body) = app
                .call(
                    Method::POST,
                    "/v1/groups",
                    Some(json!({"name": name, "query": query})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{query}: {body}");
            assert_eq!(
                &ids(&app, &format!("/v1/groups/{name}/devices?limit=1000")).await,
                expected,
                "{query}"
            );
            let (_, info) = app
                .call(Method::GET, &format!("/v1/groups/{name}"), None)
                .await;
            assert_eq!(info["devices"], expected.len(), "{query}");
            // The same query filters the device list.
            let encoded =
                url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>();
            assert_eq!(
                &ids(&app, &format!("/v1/devices?query={encoded}")).await,
                expected,
                "{query}"
            );
        }

        // A device that starts to match belongs to the group at once.
        let (status, _) = app
            .call(
                Method::POST,
                "/v1/devices",
                Some(json!({"id": "d10", "hardware": "rpi4", "attributes": {"rack": 9}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(
            ids(&app, "/v1/groups/g1/devices")
                .await
                .contains(&"d10".to_owned()),
            "late joiner"
        );

        // Pagination through a dynamic group.
        let first = app
            .call(Method::GET, "/v1/groups/g3/devices?limit=4", None)
            .await
            .1;
        assert_eq!(first["items"].as_array().unwrap().len(), 4);
        let cursor = first["next_cursor"].as_str().unwrap();
        let rest = ids(
            &app,
            &format!("/v1/groups/g3/devices?limit=100&cursor={cursor}"),
        )
        .await;
        assert_eq!(
            rest.len(),
            11 - 4 - 1,
            "all 10 but d10 (no label) minus the first page"
        );
    }
);

on_both_backends!(
    malformed_queries_name_the_column,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/groups",
                Some(json!({"name": "bad", "query": "hardware = \"rpi4\" and site = 1"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("at column 23") && message.contains("expected a field"),
            "{message}"
        );
        let (status, _) = app.call(Method::GET, "/v1/groups/bad", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
        let (status, body) = app
            .call(Method::GET, "/v1/devices?query=firmware%20%3C%202", None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
);

on_both_backends!(
    static_groups_keep_their_members,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        register(&app).await;
        let (status, _) = app
            .call(Method::POST, "/v1/groups", Some(json!({"name": "canary"})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/groups/canary/members",
                Some(json!({"devices": ["d03", "d01", "d01"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, again) = app
            .call(
                Method::POST,
                "/v1/groups/canary/members",
                Some(json!({"devices": ["d01"]})),
            )
            .await;
        assert_eq!(again["added"], 0, "adding a member twice changes nothing");
        assert_eq!(ids(&app, "/v1/groups/canary/devices").await, ["d01", "d03"]);

        let (status, body) = app
            .call(
                Method::POST,
                "/v1/groups/canary/members",
                Some(json!({"devices": ["d02", "ghost"]})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["error"]["message"].as_str().unwrap().contains("ghost"),
            "{body}"
        );
        assert_eq!(
            ids(&app, "/v1/groups/canary/devices").await,
            ["d01", "d03"],
            "all or nothing"
        );

        app.call(
            Method::POST,
            "/v1/groups",
            Some(json!({"name": "dyn", "query": "hardware = \"cm4\""})),
        )
        .await;
        let (status, _) = app
            .call(
                Method::POST,
                "/v1/groups/dyn/members",
                Some(json!({"devices": ["d01"]})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a dynamic group's query decides"
        );

        let (status, _) = app
            .call(Method::DELETE, "/v1/groups/canary/members/d01", None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // Deleting a device removes its memberships.
        app.call(Method::DELETE, "/v1/devices/d03", None).await;
        assert_eq!(
            ids(&app, "/v1/groups/canary/devices").await,
            Vec::<String>::new()
        );
        let (_, list) = app.call(Method::GET, "/v1/groups", None).await;
        assert_eq!(list.as_array().map(Vec::len), Some(2));
        let (status, _) = app.call(Method::DELETE, "/v1/groups/canary", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _): (StatusCode, Value) =
            app.call(Method::GET, "/v1/groups/canary", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
);
