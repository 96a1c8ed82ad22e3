//! The audit chain: every mutation leaves a link; `fleetwave audit verify` (the real binary,
//! reading the database) passes on an untouched chain and names the link an UPDATE edited.

use fleetwave::registry::entities::audit_events;
use fleetwave_tests::harness::app::{Backend, TestApp};
use fleetwave_tests::harness::bin;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::json;

use crate::on_both_backends;

fn audit_verify(database_url: &str) -> (bool, String, String) {
    let out = bin::command("fleetwave")
        .args(["audit", "verify"])
        .env("FLEETWAVE__DATABASE__URL", database_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

on_both_backends!(
    edits_are_named_by_audit_verify,
    |backend: Backend| async move {
        let app = TestApp::spawn(backend).await.unwrap();
        for i in 0..4 {
            let (status, _) = app
                .call(
                    Method::POST,
                    "/v1/devices",
                    Some(json!({"id": format!("pi-{i}"), "hardware": "rpi4"})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, _) = app.call(Method::DELETE, "/v1/devices/pi-0", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        // 1 bootstrap token + 4 creates + 1 delete.
        let (_, report) = app.call(Method::GET, "/v1/audit/verify", None).await;
        assert_eq!(report["links"], 6, "{report}");
        assert_eq!(report["broken"], serde_json::Value::Null);
        let (ok, stdout, stderr) = audit_verify(&app.database_url);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("intact: 6 link(s)"), "{stdout}");

        app.db
            .execute_unprepared(
                "UPDATE audit_events SET subject = 'device:someone-else' WHERE seq = 3",
            )
            .await
            .unwrap();
        let (ok, _, stderr) = audit_verify(&app.database_url);
        assert!(!ok, "an edited chain fails");
        assert!(stderr.contains("broken at link 3"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");

        // Re-hashing the edited row only moves the break to the next link.
        let edited = audit_events::Entity::find_by_id(3)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let rehashed = fleetwave::audit::link_hash(&edited);
        app.db
            .execute_unprepared(&format!(
                "UPDATE audit_events SET hash = '{rehashed}' WHERE seq = 3"
            ))
            .await
            .unwrap();
        let (_, report) = app.call(Method::GET, "/v1/audit/verify", None).await;
        assert_eq!(report["broken"]["seq"], 4, "{report}");
        assert_eq!(report["links"], 3);
        app.db
            .execute_unprepared("DELETE FROM audit_events WHERE seq = 3")
            .await
            .unwrap();
        let (ok, _, stderr) = audit_verify(&app.database_url);
        assert!(!ok);
        assert!(
            stderr.contains("broken at link 3") && stderr.contains("missing"),
            "{stderr}"
        );
    }
);
