//! One module per subcommand.

mod bench;
mod combine;
mod data;
pub(crate) mod demo;
mod diff;
mod eval;
mod fetch;
mod inspect;
mod origins;
mod peft;
pub(crate) mod push;
mod recommend;
mod similarity;
mod study;
mod train;

use anyhow::Result;
use serde_json::Value;

use crate::cli::{
    AggregateArgs, BenchArgs, CombineArgs, Command, DataArgs, DemoArgs, DiffArgs, EvalArgs, FetchArgs, InspectArgs,
    OriginsArgs, PeftCommand, PeftExportArgs, PeftImportArgs, PushArgs, RecommendArgs, ReportArgs, SimilarityArgs,
    SweepArgs, TrainArgs,
};

/// Runs a command; `json` is the global `--json`, handed to the command's arguments.
pub fn run(command: Command, json: bool) -> Result<()> {
    match command {
        Command::Inspect(args) => inspect::run(&InspectArgs { json, ..args }),
        Command::Peft(PeftCommand::Import(args)) => peft::import(&PeftImportArgs { json, ..args }),
        Command::Peft(PeftCommand::Export(args)) => peft::export(&PeftExportArgs { json, ..args }),
        Command::Combine(args) => combine::run(&CombineArgs { json, ..args }),
        Command::Recommend(args) => recommend::run(&RecommendArgs { json, ..args }),
        Command::Similarity(args) => similarity::run(&SimilarityArgs { json, ..args }),
        Command::Eval(args) => eval::run(&EvalArgs { json, ..args }),
        Command::Origins(args) => origins::run(&OriginsArgs { json, ..args }),
        Command::Fetch(args) => fetch::run(&FetchArgs { json, ..args }),
        Command::Train(args) => train::run(&TrainArgs { json, ..args }),
        Command::Data(args) => data::run(&DataArgs { json, ..args }),
        Command::Bench(args) => bench::run(&BenchArgs { json, ..args }),
        Command::Sweep(args) => study::sweep(&SweepArgs { json, ..args }),
        Command::Aggregate(args) => study::aggregate(&AggregateArgs { json, ..args }),
        Command::Report(args) => study::report(&ReportArgs { json, ..args }),
        Command::Push(args) => push::run(&PushArgs { json, ..args }),
        Command::Diff(args) => diff::run(&DiffArgs { json, ..args }),
        Command::Demo(args) => demo::run(&DemoArgs { json, ..args }),
    }
}

/// Prints a value as pretty JSON on stdout.
fn print_json(v: &Value) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
