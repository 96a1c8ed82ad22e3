//! `fleetwave ca init`, `device provision|revoke` and `broker config`: device identity with
//! fleetwave's own CA, on the machine that keeps the CA directory (never on the service).

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use super::Output;
use crate::pki::Ca;

/// CA verbs.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create the device CA in a directory (ca.pem, ca.key mode 0600, an empty CRL).
    Init {
        /// The CA directory.
        #[arg(long, default_value = "fleetwave-pki")]
        dir: PathBuf,
    },
}

/// Broker verbs.
#[derive(Debug, clap::Subcommand)]
pub enum BrokerCommand {
    /// Write a Mosquitto configuration: mutual TLS with this CA, the CRL, per-device ACLs,
    /// and the service's own client certificate.
    Config {
        /// The CA directory.
        #[arg(long, default_value = "fleetwave-pki")]
        pki: PathBuf,
        /// Where to write mosquitto.conf, acl, certificates and keys.
        #[arg(long)]
        out: PathBuf,
        /// The TLS listener's port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// A name or address devices reach the broker by (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// The topic prefix, as configured on the service.
        #[arg(long, default_value = "fleetwave")]
        prefix: String,
        /// The CN of the service's client certificate.
        #[arg(long, default_value = "fleetwave-service")]
        service_cn: String,
    },
}

/// Runs a CA verb.
pub fn ca(cmd: CaCommand, out: Output) -> Result<()> {
    match cmd {
        CaCommand::Init { dir } => {
            Ca::init(&dir)?;
            out.emit(
                format!("device CA created in {} (keep ca.key safe)", dir.display()),
                &json!({"ok": true, "dir": dir}),
            );
        }
    }
    Ok(())
}

/// Issues device `id` its certificate bundle in `out`.
pub fn provision(
    pki: &std::path::Path,
    id: &str,
    bundle: &std::path::Path,
    out: Output,
) -> Result<()> {
    Ca::open(pki)?.provision(id, bundle)?;
    out.emit(
        format!(
            "{id}: device.pem, device.key and ca.pem written to {} (point the agent's [broker] cert, key and ca at them)",
            bundle.display()
        ),
        &json!({"ok": true, "device": id, "bundle": bundle}),
    );
    Ok(())
}

/// Revokes device `id`'s certificate; the broker refuses it once it reloads the CRL.
pub fn revoke(pki: &std::path::Path, id: &str, out: Output) -> Result<()> {
    Ca::open(pki)?.revoke(id)?;
    out.emit(
        format!(
            "{id} revoked: copy {}/crl.pem to the broker's crlfile and reload it",
            pki.display()
        ),
        &json!({"ok": true, "device": id, "crl": pki.join("crl.pem")}),
    );
    Ok(())
}

/// Runs a broker verb.
pub fn broker(cmd: BrokerCommand, out: Output) -> Result<()> {
    match cmd {
        BrokerCommand::Config {
            pki,
            out: dir,
            port,
            hosts,
            prefix,
            service_cn,
        } => {
            let conf = Ca::open(&pki)?.broker_config(&dir, port, &hosts, &prefix, &service_cn)?;
            out.emit(
                format!(
                    "wrote {} (run: mosquitto -c {}); the service connects with service.pem/service.key",
                    conf.display(),
                    conf.display()
                ),
                &json!({"ok": true, "config": conf}),
            );
        }
    }
    Ok(())
}
