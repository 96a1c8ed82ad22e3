//! `fleetwave audit verify`: walks the audit chain straight from the database (not through
//! the API, which an attacker might control) and names the first broken link.

use anyhow::{Result, bail};

use super::Output;
use super::serve::ConfigArgs;
use crate::{audit, db};

/// Audit verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check every link of the audit chain; exit non-zero at the first broken one.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Runs an audit verb.
pub async fn run(cmd: Command, out: Output) -> Result<()> {
    match cmd {
        Command::Verify { config } => {
            let settings = config.load()?;
            let conn = db::connect(&settings.database_url(), 2).await?;
            let report = audit::verify(&conn).await?;
            match &report.broken {
                None => {
                    out.emit(
                        format_args!(
                            "audit chain intact: {} link(s), head {}",
                            report.links,
                            report.head.as_deref().unwrap_or("(empty)")
                        ),
                        &serde_json::json!({"ok": true, "report": report}),
                    );
                    Ok(())
                }
                Some(b) => {
                    if out.json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "code": "audit_chain_broken", "report": report})
                        );
                    }
                    bail!(
                        "audit chain broken at link {}: {} ({} link(s) before it are intact)",
                        b.seq,
                        b.reason,
                        report.links
                    )
                }
            }
        }
    }
}
