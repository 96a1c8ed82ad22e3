//! The embedded MQTT broker (rumqttd) of `fleetwave serve` on its embedded defaults: one
//! plain-TCP MQTT 3.1.1 listener on `[mqtt] listen`, running on a thread of its own. It is
//! for trying fleetwave on one machine; production points `[mqtt] url` at Mosquitto, EMQX or
//! another broker with mutual TLS and per-device ACLs, which rumqttd does not enforce.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};

/// Starts the broker on `listen` (port 0 picks a free port) and returns the bound address.
/// Fails with a clear message when the port is taken.
pub fn start(listen: SocketAddr) -> Result<SocketAddr> {
    // rumqttd binds inside its own thread, where a failure would go unseen: check the port
    // here first (and resolve port 0).
    let probe = TcpListener::bind(listen).with_context(|| {
        format!(
            "the embedded MQTT broker cannot listen on {listen} (is another broker there?): \
             set [mqtt] listen to a free address, or [mqtt] url to use that broker"
        )
    })?;
    let addr = probe.local_addr()?;
    drop(probe);
    let config = config::Config::builder()
        .add_source(config::File::from_str(
            &broker_toml(addr),
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(config::Config::try_deserialize::<rumqttd::Config>)
        .context("configuring the embedded MQTT broker")?;
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error.message = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("starting the embedded MQTT broker's thread")?;
    wait_until_listening(addr)?;
    Ok(addr)
}

fn wait_until_listening(addr: SocketAddr) -> Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::bail!("the embedded MQTT broker did not start listening on {addr} within 2 s")
}

/// rumqttd's configuration: small commit-log segments (devices send small messages) and
/// payloads up to 256 KiB (job documents carry a signed manifest).
fn broker_toml(addr: SocketAddr) -> String {
    format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 262144
    max_inflight_count = 100
    dynamic_filters = true
"#
    )
}
