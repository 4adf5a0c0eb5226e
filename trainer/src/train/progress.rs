//! Where a run stands ([`Progress`]: what a checkpoint holds, and the curves) and how it shows on
//! the terminal (the progress bar, validation lines).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use tpv_shared::Curve;

use super::Trainer;
use super::checkpoint::{self, Best, Checkpoint};
use super::engine::State;
use crate::config::Config;
use crate::optim::AdamW;

/// A resolved config without the keys that only decide what is scored after training (baselines,
/// the test pass) or how memory is spent (gradient checkpointing: the same gradient): a
/// checkpoint resumes when everything that shapes training is the same, so a study whose later
/// version scores other baselines, or a run restarted with checkpointing after running out of
/// memory, still resumes.
fn training_part(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(t) = c.get_mut("train").and_then(serde_json::Value::as_object_mut) {
        for key in ["baselines", "zero_shot_baseline", "test", "gradient_checkpointing"] {
            t.remove(key);
        }
    }
    c
}

fn push(curves: &mut BTreeMap<String, Curve>, name: &str, step: u64, value: f64) {
    let c = curves.entry(name.to_owned()).or_default();
    c.steps.push(step as f32);
    c.values.push(value as f32);
}

/// Where a run stands: the optimizer's state and what the loop keeps (the best prompt on
/// validation, the curves, evaluations without improvement) — what a checkpoint holds besides the
/// config and the data fingerprint.
pub(super) struct Progress {
    pub(super) state: State,
    pub(super) best: Option<Best>,
    pub(super) curves: BTreeMap<String, Curve>,
    pub(super) stale: u32,
    /// The live copy of the curves for TensorBoard (not in checkpoints: a resumed run starts a
    /// new event file).
    pub(super) events: Option<crate::events::EventWriter>,
}

impl Progress {
    /// A point of curve `name`, also written to the event file.
    pub(super) fn record(&mut self, name: &str, step: u64, value: f64) -> Result<()> {
        push(&mut self.curves, name, step, value);
        self.event(name, step, value)
    }

    /// A value for TensorBoard only (the gradient norm).
    pub(super) fn event(&mut self, name: &str, step: u64, value: f64) -> Result<()> {
        match &mut self.events {
            Some(w) => w.scalar(name, step, value),
            None => Ok(()),
        }
    }

    pub(super) fn start(config: &Config, params: Vec<f32>) -> Self {
        let mut adam = AdamW::new(params.len(), config.optim.weight_decay);
        adam.beta1 = config.optim.beta1;
        adam.beta2 = config.optim.beta2;
        adam.eps = config.optim.eps;
        Self {
            state: State {
                step: 0,
                params,
                adam,
                rng: config.train.seed,
            },
            best: None,
            curves: BTreeMap::new(),
            stale: 0,
            events: None,
        }
    }

    /// The progress a checkpoint holds, refused when what shapes training, the data or the
    /// prompt's size changed since it was written.
    pub(super) fn resume(path: &Path, t: &Trainer<'_>) -> Result<Self> {
        let c = checkpoint::read(path)?;
        if training_part(&c.config) != training_part(&t.resolved) {
            bail!(
                "{} was written by a different configuration; resume with the same config or pass --overwrite",
                path.display()
            );
        }
        if c.fingerprint != t.splits.fingerprint {
            bail!(
                "{}: the data changed since the checkpoint (fingerprint {} → {})",
                path.display(),
                c.fingerprint,
                t.splits.fingerprint
            );
        }
        let n = t.param_count();
        if c.params.len() != n {
            bail!(
                "{}: the checkpoint's parameters have {} values, expected {n}",
                path.display(),
                c.params.len()
            );
        }
        let mut p = Self::start(t.config, c.params);
        p.state.step = c.step;
        p.state.adam.m = c.adam_m;
        p.state.adam.v = c.adam_v;
        p.state.adam.t = c.adam_t;
        p.state.rng = c.rng;
        p.best = c.best;
        p.curves = c.curves;
        p.stale = c.evals_without_improvement;
        Ok(p)
    }

    pub(super) fn checkpoint(&self, t: &Trainer<'_>) -> Checkpoint {
        Checkpoint {
            step: self.state.step,
            params: self.state.params.clone(),
            adam_m: self.state.adam.m.clone(),
            adam_v: self.state.adam.v.clone(),
            adam_t: self.state.adam.t,
            rng: self.state.rng,
            best: self.best.clone(),
            evals_without_improvement: self.stale,
            curves: self.curves.clone(),
            config: t.resolved.clone(),
            fingerprint: t.splits.fingerprint.clone(),
        }
    }
}

pub(super) fn fmt_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {:.2}%", 100.0 * v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
pub(super) fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Set in the environment of a study's parallel jobs: no progress bar (validation lines still
/// print), so that the slots' bars do not overwrite each other.
pub const NO_PROGRESS_BAR: &str = "TPV_NO_PROGRESS_BAR";

pub(super) fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let target = if std::env::var_os(NO_PROGRESS_BAR).is_some() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  {per_sec}  [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style);
    }
    bar.set_position(at);
    bar
}
