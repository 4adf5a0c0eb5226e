//! The library behind the `tpv` command line: commands, data, training. The model code, prompt
//! arithmetic and file formats live in `tpv-shared`.

/// `println!` that returns an I/O error instead of panicking (a closed pipe, as in `tpv … | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

pub mod assets;
pub mod cli;
pub mod commands;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod data;
pub mod energy;
pub mod events;
pub mod hub;
pub mod io;
pub mod models;
pub mod optim;
pub mod parquet_guard;
pub mod serve;
pub mod study;
pub mod train;
