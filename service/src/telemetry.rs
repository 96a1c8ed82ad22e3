//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG`, so log lines never mix with a
//! command's output on stdout. CLI verbs default to `warn`; `serve` to `info`, as JSON when
//! `FLEETWAVE_LOG_FORMAT=json` (production).

use tracing_subscriber::EnvFilter;

/// Installs the CLI's subscriber once; later calls do nothing.
pub fn init() {
    init_with("warn");
}

/// [`init`] with `default` as the filter when `RUST_LOG` is unset.
pub fn init_with(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the service's subscriber (if the CLI's is not installed already).
pub fn init_service() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("FLEETWAVE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
