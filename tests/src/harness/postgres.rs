//! A fresh PostgreSQL database per test: created under a UUID name, migrated, and dropped
//! (with any connections still open) when the [`TestDb`] is dropped.

use anyhow::{Context, Result};
use fleetwave_migrations::Migrator;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;

use super::{env, init, unique_id};

/// One test's database.
pub struct TestDb {
    /// The connection to the test's database.
    pub conn: DatabaseConnection,
    /// The database's name, `fw_test_<16 hex>`.
    pub name: String,
    /// The URL of the test's database, for processes the test starts.
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates the database and applies every migration.
    pub async fn new() -> Result<Self> {
        let db = Self::empty().await?;
        Migrator::up(&db.conn, None)
            .await
            .with_context(|| format!("migrating {}", db.name))?;
        Ok(db)
    }

    /// Creates the database with no schema at all (for testing migrations themselves).
    pub async fn empty() -> Result<Self> {
        init();
        let admin_url = env::database_url();
        let name = format!("fw_test_{}", unique_id());
        let admin = Database::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url}"))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await?;
        let mut url = url::Url::parse(&admin_url).context("database URL")?;
        url.set_path(&name);
        let url = url.to_string();
        let conn = Database::connect(&url)
            .await
            .with_context(|| format!("connecting to {name}"))?;
        Ok(TestDb {
            conn,
            name,
            url,
            admin_url,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on async work: drop the
        // database from a thread of its own with a small runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = Database::connect(&admin_url).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Registers `devices` devices (`dev-0000001`…, hardware `rpi4`, running 1.0.0, an attribute
/// `site` of 50 values) in bulk, all members of the static group `group`; prints how long
/// it took. For benchmarks at fleet scale.
pub async fn register_fleet(
    conn: &impl sea_orm::ConnectionTrait,
    devices: u64,
    group: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    let key = fleetwave::registry::version_key::of(&semver::Version::new(1, 0, 0));
    conn.execute_unprepared(&format!(
        "INSERT INTO devices (id, serial, hardware, attributes, firmware_version, firmware_key, created_at, updated_at) \
         SELECT 'dev-' || lpad(i::text, 7, '0'), NULL, 'rpi4', jsonb_build_object('site', 's-' || (i % 50)), '1.0.0', '{key}', now(), now() \
         FROM generate_series(1, {devices}) AS i;
         INSERT INTO groups (name, kind, query, created_at) VALUES ('{group}', 'static', NULL, now());
         INSERT INTO group_members (group_name, device_id, added_at) SELECT '{group}', id, now() FROM devices;
         ANALYZE;"
    ))
    .await
    .context("registering the fleet")?;
    eprintln!(
        "registered {devices} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
