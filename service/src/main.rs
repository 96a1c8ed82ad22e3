//! The `fleetwave` binary: installs the TLS crypto provider, parses the command line and
//! hands over to [`fleetwave::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // sea-orm's and object_store's TLS stacks would otherwise disagree on the provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    fleetwave::cli::run(fleetwave::cli::Cli::parse())
}
