//! One module per subcommand.

mod bench;
mod combine;
mod data;
pub(crate) mod demo;
mod eval;
mod fetch;
mod inspect;
mod origins;
mod peft;
mod similarity;
mod study;
mod train;

use anyhow::Result;
use serde_json::Value;

use crate::cli::{Command, PeftCommand};

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Peft(PeftCommand::Import(args)) => peft::import(&args),
        Command::Peft(PeftCommand::Export(args)) => peft::export(&args),
        Command::Combine(args) => combine::run(&args),
        Command::Similarity(args) => similarity::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Origins(args) => origins::run(&args),
        Command::Fetch(args) => fetch::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Sweep(args) => study::sweep(&args),
        Command::Aggregate(args) => study::aggregate(&args),
        Command::Report(args) => study::report(&args),
        Command::Demo(args) => demo::run(&args),
    }
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &Value) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
