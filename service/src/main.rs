//! The `fleetwave` binary: installs the TLS crypto provider, parses the command line and
//! hands over to [`fleetwave::cli`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the C library's allocator: the shadow handler allocates and frees
/// small JSON values for every device message, and glibc's malloc and free took about a
/// third of the service's CPU time in the ingestion benchmark (P2, BENCHMARKS.md). Built
/// with `no_thp`, so that it does not ask for transparent huge pages for its arenas: with
/// them (THP in `madvise` mode, as here) the service's RSS at 1M devices (P5) rose from 103 to
/// 139 MiB, for no CPU time saved. A host with THP `always` still hands them out.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // sea-orm's and object_store's TLS stacks would otherwise disagree on the provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    fleetwave::cli::run(fleetwave::cli::Cli::parse())
}
