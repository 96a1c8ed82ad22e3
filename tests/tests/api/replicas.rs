//! Two replicas starting at once on a fresh PostgreSQL database: migrations apply once and
//! exactly one of them creates the bootstrap admin token.

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
