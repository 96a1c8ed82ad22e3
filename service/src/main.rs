//! The `fleetwave` binary: parses the command line and hands over to [`fleetwave::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fleetwave::cli::Cli::parse();
    fleetwave::telemetry::init();
    fleetwave::cli::run(cli)
}
