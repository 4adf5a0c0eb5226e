//! `tpv sweep CONFIG --emit slurm -o DIR`: Slurm job-array scripts for a study that outgrows one
//! machine. Stage 1 holds the jobs without dependencies (prompt tuning, multi-task, random-init
//! transfer), stage 2 the rest; `submit.sh` submits stage 2 to start after stage 1 succeeded.
//! Array index i of a stage runs `tpv sweep CONFIG --stage S --index i`, which resumes an
//! interrupted run and skips a finished one, so a requeued or repeated task is harmless.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Study;
use crate::io;

/// Options of the emitted scripts.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Extra `#SBATCH` lines (`--partition=gpu`, `--gres=gpu:1`, `--time=04:00:00`, …).
    pub sbatch: Vec<String>,
    /// At most this many array tasks at once (`%N`).
    pub max_parallel: Option<usize>,
    /// The `tpv` command on the cluster.
    pub tpv: String,
    /// `--set` overrides, repeated in every command.
    pub sets: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+@,".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes `stage1.sbatch`, `stage2.sbatch` (when stage 2 has jobs) and `submit.sh` into `dir`.
pub fn emit(study: &Study, dir: &Path, opts: &SlurmOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = std::fs::canonicalize(&study.path).unwrap_or_else(|_| study.path.clone());
    // Relative paths in the config (the study output) mean what they mean here.
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let logs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let jobs = study.jobs();
    let mut written = Vec::new();
    let mut stages = Vec::new();
    for stage in [1u8, 2] {
        let ids: Vec<&str> = jobs
            .iter()
            .filter(|j| j.stage() == stage)
            .map(|j| j.id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let mut s = String::new();
        s.push_str("#!/bin/bash\n");
        s.push_str(&format!("#SBATCH --job-name=tpv-{}-s{stage}\n", study.study.name));
        let cap = opts.max_parallel.map_or(String::new(), |m| format!("%{m}"));
        s.push_str(&format!("#SBATCH --array=0-{}{cap}\n", ids.len() - 1));
        s.push_str(&format!("#SBATCH --chdir={}\n", cwd.display()));
        s.push_str(&format!("#SBATCH --output={}/logs/%x-%a.out\n", logs.display()));
        for line in &opts.sbatch {
            s.push_str(&format!("#SBATCH {line}\n"));
        }
        s.push_str(&format!(
            "# Stage {stage} of study {}: {} runs, one per array index:\n",
            study.study.name,
            ids.len()
        ));
        for (i, id) in ids.iter().enumerate() {
            s.push_str(&format!("#   {i}: {id}\n"));
        }
        s.push_str("set -euo pipefail\n");
        let mut cmd = format!(
            "{} sweep {} --stage {stage} --index \"$SLURM_ARRAY_TASK_ID\"",
            opts.tpv,
            shell_quote(&config.display().to_string())
        );
        for set in &opts.sets {
            cmd.push_str(&format!(" --set {}", shell_quote(set)));
        }
        s.push_str(&format!("exec {cmd}\n"));
        let path = dir.join(format!("stage{stage}.sbatch"));
        io::write_atomic(&path, s.as_bytes())?;
        written.push(path);
        stages.push(stage);
    }
    let mut submit = String::from(
        "#!/bin/bash\n# Submits the study's stages; stage 2 starts when every stage-1 task succeeded.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nmkdir -p logs\n",
    );
    if stages.contains(&1) {
        submit.push_str("s1=$(sbatch --parsable stage1.sbatch)\necho \"stage 1: $s1\"\n");
        if stages.contains(&2) {
            submit.push_str(
                "s2=$(sbatch --parsable --dependency=afterok:\"$s1\" stage2.sbatch)\necho \"stage 2: $s2\"\n",
            );
        }
    } else if stages.contains(&2) {
        submit.push_str("s2=$(sbatch --parsable stage2.sbatch)\necho \"stage 2: $s2\"\n");
    }
    submit.push_str(&format!(
        "echo \"when done: {} aggregate {}\"\n",
        opts.tpv,
        shell_quote(&study.output().display().to_string())
    ));
    let path = dir.join("submit.sh");
    io::write_atomic(&path, submit.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in written.iter().chain([&path]) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    written.push(path);
    Ok(written)
}
