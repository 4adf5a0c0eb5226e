//! `tpv train CONFIG [--set k=v …] [--resume|--overwrite] [--json]`.

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::TrainArgs;
use crate::{config, train};

pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = config::load(&args.config, &args.sets)?;
    let opts = train::RunOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        abort_after_step: args.abort_after_step,
    };
    let finished_before = args.resume && train::run_state(&cfg.train.output).is_finished();
    let path = train::run(&cfg, &opts).with_context(|| format!("training {}", args.config.display()))?;
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
