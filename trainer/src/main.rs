//! `tpv`: the command line of tpv. The logic lives in the commands and in `tpv-shared`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = tpv_trainer::cli::Cli::parse();
    init_tracing(cli.verbose);
    match tpv_trainer::commands::run(cli.command, cli.json) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`) is not an error.
        Err(err) if is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A training step allocates and frees thousands of activation-sized buffers (MBs each). glibc
/// serves blocks above its (dynamic) mmap threshold with fresh mappings and returns freed heap
/// tops to the kernel, so each step page-faults and clears that memory again: on the
/// SmolLM2-shaped CPU benchmark a quarter of the step (8.4 s → 6.1 s with this, `tpv bench`).
/// A fixed threshold at its maximum (32 MiB) and no trimming keep the blocks for reuse; the
/// process holds on to its peak heap, which a trainer reaches in its first step anyway.
/// (mimalloc, tried as the global allocator, gave 8.0 s, and 6.8 s with purging off.)
/// T5-base-shaped attention scores are 36 MB, above the largest threshold glibc allows, so mmap
/// is turned off altogether: those blocks come from the heap too (T5 step 9.8 / 8.5 s → 8.3 /
/// 8.0 s and system time 27 / 20 s → 15 / 12 s on a 2-vCPU host, 2026-12-06; peak memory unchanged).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // -1 turns trimming off (mallopt(3)); the largest int would still trim a free top
        // above 2 GiB, which a T5-base step's end leaves.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The HTTP client's debug and trace output dumps request headers (HF_TOKEN's Authorization
    // among them): never shown, whatever RUST_LOG says.
    for quiet in ["ureq=info", "ureq_proto=info", "rustls=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
