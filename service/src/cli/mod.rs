//! The `fleetwave` command line: one module per noun (`key`, `release`, `demo`), each verb a
//! function that does its work and returns what to print. Errors become one line on stderr
//! and a non-zero exit; with `--json`, also a JSON object on stdout with a stable `code`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod audit;
pub mod client;
pub mod demo;
pub mod fleet;
pub mod key;
pub mod pki;
pub mod release;
pub mod rollout;
pub mod serve;

/// fleetwave: signed firmware, rolled out to device fleets in waves that halt themselves.
#[derive(Debug, Parser)]
#[command(name = "fleetwave", version, about)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where the service is, for the verbs that call it.
    #[command(flatten)]
    pub server: client::ServerArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level nouns.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Release signing keys.
    #[command(subcommand)]
    Key(key::Command),
    /// Sign and verify releases offline; upload and list them on the service.
    #[command(subcommand)]
    Release(release::Command),
    /// Devices in the registry.
    #[command(subcommand)]
    Device(fleet::DeviceCommand),
    /// Device groups.
    #[command(subcommand)]
    Group(fleet::GroupCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(fleet::TokenCommand),
    /// Rollouts: create, watch, pause, resume, cancel, approve.
    #[command(subcommand)]
    Rollout(rollout::Command),
    /// The device certificate authority.
    #[command(subcommand)]
    Ca(pki::CaCommand),
    /// Broker configuration for mutual TLS and per-device ACLs.
    #[command(subcommand)]
    Broker(pki::BrokerCommand),
    /// The whole product on this machine: the service on its embedded defaults, N agents,
    /// two signed releases and a live 3-wave rollout (`--fail-rate` shows halt and rollback).
    Demo(demo::Args),
    /// Run the service: HTTP API, registry and audit log (embedded defaults without a config).
    Serve(serve::ConfigArgs),
    /// Apply pending database migrations and exit (the service also does this at start-up).
    Migrate(serve::ConfigArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// Configuration verbs.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the example configuration: every key, documented, with its default.
    Example,
}

/// How results are shown.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// JSON on stdout for scripts.
    pub json: bool,
}

impl Output {
    /// Whether progress bars may be drawn.
    pub fn progress(self) -> bool {
        !self.json
    }

    /// Prints `human` as text, or `value` as one line of JSON.
    pub fn emit(self, human: impl std::fmt::Display, value: &serde_json::Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{human}");
        }
    }
}

/// Runs a parsed command line and maps its outcome to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let out = Output { json: cli.json };
    match cli.command {
        Command::Serve(_) => {}
        // The demo's in-process agents would fill the screen with their warnings.
        Command::Demo(_) => crate::telemetry::init_with("warn,fleetwave_agent=error,rumqttd=off"),
        _ => crate::telemetry::init(),
    }
    let result = match cli.command {
        Command::Key(cmd) => key::run(cmd, out),
        Command::Release(cmd) if cmd.is_remote() => {
            block_on(release::remote(cmd, &cli.server, out))
        }
        Command::Release(cmd) => release::run(cmd, out),
        Command::Device(fleet::DeviceCommand::Provision {
            id,
            pki,
            out: bundle,
        }) => pki::provision(&pki, &id, &bundle, out),
        Command::Device(fleet::DeviceCommand::Revoke { id, pki }) => pki::revoke(&pki, &id, out),
        Command::Device(cmd) => block_on(fleet::device(cmd, &cli.server, out)),
        Command::Ca(cmd) => pki::ca(cmd, out),
        Command::Broker(cmd) => pki::broker(cmd, out),
        Command::Group(cmd) => block_on(fleet::group(cmd, &cli.server, out)),
        Command::Token(cmd) => block_on(fleet::token(cmd, &cli.server, out)),
        Command::Rollout(cmd) => block_on(rollout::run(cmd, &cli.server, out)),
        Command::Demo(args) => demo::run(args, out),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", crate::config::EXAMPLE);
            Ok(())
        }
        Command::Serve(args) => block_on(serve::serve(args, out)),
        Command::Migrate(args) => block_on(serve::migrate(args, out)),
        Command::Audit(cmd) => block_on(audit::run(cmd, out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fleetwave: error: {err:#}");
            if out.json {
                let value = serde_json::json!({
                    "ok": false,
                    "code": error_code(&err),
                    "error": format!("{err:#}"),
                });
                println!("{value}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs an async command on a fresh multi-threaded runtime.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// The stable code of the first API or contract error in `err`'s chain, else `error`.
pub fn error_code(err: &anyhow::Error) -> String {
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<client::ApiFailure>()
                .map(|f| f.code.clone())
                .or_else(|| {
                    e.downcast_ref::<fleetwave_artifacts::Error>()
                        .map(|c| c.code().to_owned())
                })
        })
        .unwrap_or_else(|| "error".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
