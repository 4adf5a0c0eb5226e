//! `tpv train CONFIG [--set k=v …] [--resume|--overwrite] [--json]`.

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::TrainArgs;
use crate::train::stop;
use crate::{config, train};

pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = config::load(&args.config, &args.sets)?;
    let opts = train::RunOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        abort_after_step: args.abort_after_step,
    };
    let finished_before = args.resume && train::run_state(&cfg.train.output).is_finished();
    // SIGTERM/SIGINT (a scheduler's time limit, Ctrl-C): the step in flight finishes, a
    // checkpoint is written, and `--resume` continues from it; a second Ctrl-C ends at once.
    stop::install(stop::Mode::Jobs { force_on_repeat: true }).context("installing the SIGTERM/SIGINT handler")?;
    let path = match train::run(&cfg, &opts) {
        Ok(path) => path,
        Err(e) => match stop::requested() {
            Some(signal) => {
                eprintln!("{e:#}");
                super::study::interrupted(
                    &format!("training {}", args.config.display()),
                    signal,
                    "its checkpoint is kept; the same command with --resume continues it",
                )
            }
            None => return Err(e.context(format!("training {}", args.config.display()))),
        },
    };
    if args.json {
        out!(
            "{}",
            json!({ "runs": [path.display().to_string()], "trained": !finished_before })
        );
    } else {
        let prompt = crate::io::load_prompt(&path)?;
        let metrics: Vec<String> = prompt.meta.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        if finished_before {
            out!(
                "{} is finished; nothing to do (--overwrite trains again)",
                path.display()
            );
        } else {
            out!("wrote {}", path.display());
        }
        out!("{}", metrics.join(", "));
    }
    Ok(())
}
