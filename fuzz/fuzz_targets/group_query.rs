//! The query of a dynamic group, as an operator sends it to `POST /v1/groups`: any text
//! parses or is refused with a column inside the input, and a parsed query always builds
//! SQL for both databases.

#![no_main]

use fleetwave::registry::query::Query;
use libfuzzer_sys::fuzz_target;
use sea_orm::sea_query::{PostgresQueryBuilder, Query as Sql, SqliteQueryBuilder};
use sea_orm::{DatabaseBackend, sea_query::Alias};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Query::parse(text) {
        Ok(query) => {
            let select = |backend| {
                let mut select = Sql::select();
                select
                    .column(Alias::new("id"))
                    .from(Alias::new("devices"))
                    .and_where(query.to_sql(backend));
                select
            };
            let postgres = select(DatabaseBackend::Postgres).to_string(PostgresQueryBuilder);
            let sqlite = select(DatabaseBackend::Sqlite).to_string(SqliteQueryBuilder);
            assert!(postgres.starts_with("SELECT") && sqlite.starts_with("SELECT"));
        }
        Err(e) => assert!(
            e.column >= 1 && e.column <= text.chars().count() + 1,
            "column {} outside a query of {} characters: {e}",
            e.column,
            text.chars().count()
        ),
    }
});
