//! Two replicas starting at once on a fresh PostgreSQL database: migrations apply once and
//! exactly one of them creates the bootstrap admin token. And what replicas sharing a
//! database must tell apart: a deadlock PostgreSQL broke (run again) from a real error.

use fleetwave::config::Settings;
use fleetwave::registry::entities::api_tokens;
use fleetwave::startup::Application;
use fleetwave_tests::harness::postgres::TestDb;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, Statement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_together_on_an_empty_database() {
    let db = TestDb::empty().await.unwrap();
    let mqtt = fleetwave_tests::harness::mqtt::TestMqtt::new();
    let settings = |n: u32| {
        let dir = std::env::temp_dir().join(format!("fw-replica-{}-{n}", db.name));
        let mut s = Settings::load(None).unwrap();
        s.data_dir = dir;
        s.database.url = Some(db.url.clone().into());
        s.server.listen = "127.0.0.1:0".parse().unwrap();
        s.mqtt.url = Some(format!("mqtt://{}:{}", mqtt.host, mqtt.port).into());
        s.mqtt.prefix = mqtt.prefix.clone();
        s.mqtt.client_id = mqtt.client_id(&format!("replica-{n}"));
        s
    };
    let (a, b) = tokio::join!(
        Application::build(settings(1)),
        Application::build(settings(2))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let tokens = [a.bootstrap_token(), b.bootstrap_token()]
        .iter()
        .filter(|t| t.is_some())
        .count();
    assert_eq!(tokens, 1, "exactly one replica bootstraps");
    assert_eq!(api_tokens::Entity::find().count(&db.conn).await.unwrap(), 1);
    let applied = db
        .conn
        .query_one_raw(Statement::from_string(
            db.conn.get_database_backend(),
            "SELECT count(*) AS n FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap();
    let all =
        <fleetwave_migrations::Migrator as sea_orm_migration::MigratorTrait>::migrations().len();
    assert_eq!(
        applied.try_get::<i64>("", "n").unwrap(),
        all as i64,
        "each migration once"
    );
}

/// Two transactions locking two devices in opposite orders: PostgreSQL aborts one with a
/// deadlock, which the service recognises as a conflict to run again (the rollout engine
/// does); a unique violation is not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_told_apart_from_a_real_error() {
    use fleetwave::db::Conflict;
    use fleetwave::registry::is_unique_violation;
    use fleetwave_tests::harness::app::{Backend, TestApp};
    use sea_orm::TransactionTrait;
    let app = TestApp::spawn(Backend::Postgres).await.unwrap();
    for id in ["lock-a", "lock-b"] {
        let (status, body) = app
            .call(
                reqwest::Method::POST,
                "/v1/devices",
                Some(serde_json::json!({"id": id, "hardware": "rpi4"})),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let lock = |id: &str| {
        Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            format!("SELECT id FROM devices WHERE id = '{id}' FOR UPDATE"),
        )
    };
    let first = app.db.begin().await.unwrap();
    let second = app.db.begin().await.unwrap();
    first.query_all_raw(lock("lock-a")).await.unwrap();
    second.query_all_raw(lock("lock-b")).await.unwrap();
    let (a, b) = tokio::join!(
        first.query_all_raw(lock("lock-b")),
        second.query_all_raw(lock("lock-a"))
    );
    let errors: Vec<_> = [a.err(), b.err()].into_iter().flatten().collect();
    assert_eq!(errors.len(), 1, "PostgreSQL aborts exactly one: {errors:?}");
    assert!(errors[0].is_transient_conflict(), "{:?}", errors[0]);
    assert!(!is_unique_violation(&errors[0]));
    drop((first, second));

    let duplicate = app
        .db
        .execute_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "INSERT INTO devices (id, hardware, attributes, created_at, updated_at) \
             SELECT id, hardware, attributes, created_at, updated_at FROM devices \
             WHERE id = 'lock-a'",
        ))
        .await
        .unwrap_err();
    assert!(is_unique_violation(&duplicate), "{duplicate:?}");
    assert!(!duplicate.is_transient_conflict());
}
