//! Where the real parts are, read from the environment `scripts/test.sh` exports.
//!
//! | variable | default |
//! |---|---|
//! | `FLEETWAVE_TEST_DATABASE_URL` (an admin connection) | `postgres://postgres@127.0.0.1:5432/postgres` |
//! | `FLEETWAVE_TEST_MQTT_URL` | `mqtt://127.0.0.1:1883` |
//! | `FLEETWAVE_TEST_S3_ENDPOINT`, `_ACCESS_KEY`, `_SECRET_KEY`, `_REGION` | none but the region (`us-east-1`): the S3 server is started per run |

/// The admin URL of the PostgreSQL server tests create their databases on.
pub fn database_url() -> String {
    var_or(
        "FLEETWAVE_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The MQTT broker, as `(host, port)`.
pub fn mqtt_broker() -> (String, u16) {
    let raw = var_or("FLEETWAVE_TEST_MQTT_URL", "mqtt://127.0.0.1:1883");
    let url =
        url::Url::parse(&raw).unwrap_or_else(|e| panic!("FLEETWAVE_TEST_MQTT_URL={raw}: {e}"));
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    (host, url.port().unwrap_or(1883))
}

/// The S3-compatible server's endpoint and credentials.
#[derive(Clone, Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Region the signatures are made for.
    pub region: String,
}

/// The S3 server of this run. Panics with instructions when `scripts/test.sh` did not start one:
/// a missing service fails the test, it never skips it.
pub fn s3_server() -> S3Server {
    let need = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the suite with `scripts/test.sh`, which starts the S3 server")
        })
    };
    S3Server {
        endpoint: need("FLEETWAVE_TEST_S3_ENDPOINT"),
        access_key: need("FLEETWAVE_TEST_S3_ACCESS_KEY"),
        secret_key: need("FLEETWAVE_TEST_S3_SECRET_KEY"),
        region: var_or("FLEETWAVE_TEST_S3_REGION", "us-east-1"),
    }
}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
