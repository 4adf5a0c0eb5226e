//! Where a run directory stands: the files a run writes ([`prompt_path`], [`checkpoint_path`]),
//! the one test of "finished" ([`run_state`]) and what a failed run keeps ([`last_checkpoint`]).

use std::path::{Path, PathBuf};

use crate::io;

use super::checkpoint;

/// Where a run writes.
pub fn prompt_path(output: &Path) -> PathBuf {
    output.join("prompt.safetensors")
}
pub fn checkpoint_path(output: &Path) -> PathBuf {
    output.join("checkpoint.safetensors")
}

/// Where a run directory stands: finished (its run file reads and no checkpoint is beside it),
/// not finished, damaged (a run file that does not parse: truncated, corrupted; it is trained or
/// computed again, and replaced), or unreadable for a reason that is no fault of the file (an I/O
/// error, a newer format version): never replaced.
#[derive(Debug, Clone)]
pub enum RunState {
    /// The run file, read.
    Finished(Box<tpv_shared::SoftPrompt>),
    Unfinished,
    Damaged(String),
    Unreadable(String),
}

impl RunState {
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// The one test of "finished" (training, studies, aggregation and reports use it).
pub fn run_state(output: &Path) -> RunState {
    let prompt = prompt_path(output);
    if !prompt.exists() || checkpoint_path(output).exists() {
        return RunState::Unfinished;
    }
    match io::load_prompt(&prompt) {
        Ok(prompt) => RunState::Finished(Box::new(prompt)),
        Err(e) if is_damage(&e) => RunState::Damaged(format!("{e:#}")),
        Err(e) => RunState::Unreadable(format!("{e:#}")),
    }
}

/// Whether a run file's read error is the file's own fault (it does not parse), as opposed to an
/// I/O error or a format version newer than this build.
pub fn is_damage(e: &anyhow::Error) -> bool {
    !e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some()
            || matches!(
                c.downcast_ref::<tpv_shared::Error>(),
                Some(tpv_shared::Error::NewerFormat { .. })
            )
    })
}

/// What a failed run keeps, for its error message.
pub(super) fn last_checkpoint(ckpt_file: &Path) -> String {
    if ckpt_file.exists() {
        format!(
            "the last good checkpoint is {} (step {})",
            ckpt_file.display(),
            checkpoint::read(ckpt_file).map(|c| c.step).unwrap_or(0)
        )
    } else {
        "no checkpoint was written yet".to_owned()
    }
}
