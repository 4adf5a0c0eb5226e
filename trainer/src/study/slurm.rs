//! `tpv sweep CONFIG --emit slurm -o DIR`: Slurm job-array scripts for a study that outgrows one
//! machine. Stage 1 holds the jobs without dependencies (prompt tuning, multi-task, random-init
//! transfer), stage 2 the rest. Array index i of a stage runs `tpv sweep CONFIG --stage S --index
//! i`, which resumes an interrupted run and skips a finished one, so a requeued or repeated task is
//! harmless.
//!
//! Stage 2 is submitted `afterany` on the stage-1 array, not `afterok`: Slurm satisfies `afterany`
//! once every task of the array has ended in any state (completed, failed, cancelled, timed out),
//! while `afterok` is never satisfied after one failed task and leaves every stage-2 task pending
//! forever (`DependencyNeverSatisfied`), including those that never needed it. Per-task
//! dependencies (`afterok:ID_3:ID_7`) would take one submission per stage-2 job. So each stage-2
//! task checks its own inputs and fails naming the missing one: a failed stage-1 task strands
//! exactly the jobs that need it. `resubmit.sh` re-submits only the unfinished jobs of each stage
//! (`tpv sweep CONFIG --todo S` lists their indexes).
//!
//! A task at its time limit (or `scancel --signal=TERM --batch`) stops at a checkpoint: the
//! scripts `exec` tpv, so it is the process Slurm signals, and ask for SIGTERM a minute before the
//! limit; `resubmit.sh` then resumes the run from that checkpoint. Two tasks of one job (a task
//! requeued while the first still runs, a resubmission too early) never run it at once: the job's
//! lock (`RUN_DIR/.lock`) makes the second skip it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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

/// A value on an `#SBATCH` line, which no shell quoting reaches: sbatch splits the line at
/// whitespace, and a newline would start a line of the script. Refused unless plain.
fn sbatch_value(what: &str, value: &str) -> Result<()> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "{what} {value:?} contains whitespace or a control character, which an #SBATCH line cannot carry \
             (run from, and write to, directories without them)"
        );
    }
    Ok(())
}

/// What the scripts carry that no quoting protects: the values on `#SBATCH` lines (the study's
/// name, the working and output directories), the extra `--sbatch` lines, the tpv command.
/// Checked before anything else of an emission (the preflight included).
pub fn check_values(study: &Study, dir: &Path, opts: &SlurmOptions) -> Result<()> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    sbatch_value("study.name", &study.study.name)?;
    sbatch_value("the working directory", &cwd.display().to_string())?;
    sbatch_value("the output directory", &dir.display().to_string())?;
    for line in &opts.sbatch {
        if line.chars().any(char::is_control) {
            bail!("--sbatch {line:?} contains a control character (one #SBATCH line each)");
        }
    }
    if opts.tpv.chars().any(char::is_control) {
        bail!("the tpv command {:?} contains a control character", opts.tpv);
    }
    Ok(())
}

/// Seconds before a task's time limit that Slurm sends tpv SIGTERM (`--signal=B:TERM@…`): a
/// training step and the checkpoint's write fit in it, and Slurm may send it up to a minute early
/// anyway. Not asked for when `--sbatch` gives a `--signal`, or a `--time` under ten times this
/// (the signal would come before any work; the time limit's own SIGTERM stops tpv as well).
pub const TERM_BEFORE_LIMIT_S: u64 = 60;

/// Whether the stage scripts ask for SIGTERM before the time limit (see [`TERM_BEFORE_LIMIT_S`]).
fn signal_before_limit(sbatch: &[String]) -> bool {
    let given = |l: &String| l.trim_start().starts_with("--signal");
    let short = time_limit_s(sbatch).is_some_and(|t| t < 10 * TERM_BEFORE_LIMIT_S);
    !sbatch.iter().any(given) && !short
}

/// The `--time`/`-t` of `--sbatch` lines in seconds (`None`: none, unlimited, or unparsed).
fn time_limit_s(sbatch: &[String]) -> Option<u64> {
    let value = sbatch.iter().rev().find_map(|l| {
        let l = l.trim();
        ["--time=", "--time ", "-t=", "-t "]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .map(str::trim)
    })?;
    // Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
    let (days, rest) = match value.split_once('-') {
        Some((d, r)) => (Some(d.parse::<u64>().ok()?), r),
        None => (None, value),
    };
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let secs = match (days.is_some(), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (_, [h, m, s]) => (h * 60 + m) * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => (h * 60 + m) * 60,
        _ => return None,
    };
    Some(days.unwrap_or(0) * 86_400 + secs)
}

/// One stage's job array: one array index per job id, each running `SWEEP --stage S --index I`
/// from `cwd` with its log under `logs`.
fn stage_script(
    study: &Study,
    stage: u8,
    ids: &[&str],
    (cwd, logs): (&Path, &Path),
    opts: &SlurmOptions,
    sweep: &str,
) -> String {
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
    if signal_before_limit(&opts.sbatch) {
        // SIGTERM to tpv (the batch shell, by `exec`) a while before the time limit: it stops
        // at a checkpoint, and resubmit.sh resumes the run there.
        s.push_str(&format!("#SBATCH --signal=B:TERM@{TERM_BEFORE_LIMIT_S}\n"));
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
    // `exec`: tpv is the batch step's process, so `scancel --signal=TERM --batch` and the time
    // limit's SIGTERM reach it (and no shell waits in between); stopped, it exits 143 with a
    // checkpoint, and `resubmit.sh` resumes it.
    s.push_str(&format!(
        "exec {} --stage {stage} --index \"$SLURM_ARRAY_TASK_ID\"\n",
        sweep
    ));
    s
}

/// Re-submits only the unfinished jobs of each stage, stage 2 after the new stage-1 tasks; the
/// jobs are listed from the directory the array tasks run in (the study's output may be relative
/// to it).
fn resubmit_script(stages: &[u8], cwd: &Path, sweep: &str, cap: &str) -> String {
    let cwd = shell_quote(&cwd.display().to_string());
    let mut resubmit = String::from(
        "#!/bin/bash\n# Re-submits the jobs that have not finished (failed, cancelled, timed out, or\n\
         # stranded by a missing input); a finished run is never run again.\n\
         set -euo pipefail\ncd \"$(dirname \"$0\")\"\nmkdir -p logs\ndep=()\n",
    );
    for &stage in stages {
        resubmit.push_str(&format!(
            "todo=$(cd {cwd} && {sweep} --todo {stage})\n\
             if [ -n \"$todo\" ]; then\n\
             \x20 s{stage}=$(sbatch --parsable ${{dep[@]+\"${{dep[@]}}\"}} --array=\"$todo\"{cap} stage{stage}.sbatch)\n\
             \x20 echo \"stage {stage}: $s{stage} (indexes $todo)\"\n\
             \x20 dep=(--dependency=afterany:\"$s{stage}\")\n\
             else\n\
             \x20 echo \"stage {stage}: every job finished\"\n\
             fi\n"
        ));
    }
    resubmit
}

/// Writes `stage1.sbatch`, `stage2.sbatch` (when stage 2 has jobs) and `submit.sh` into `dir`.
/// Every value from the study or the command line is quoted for the shell, or refused where no
/// quoting applies (`#SBATCH` lines).
pub fn emit(study: &Study, dir: &Path, opts: &SlurmOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = std::fs::canonicalize(&study.path).unwrap_or_else(|_| study.path.clone());
    // Relative paths in the config (the study output) mean what they mean here.
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let logs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    check_values(study, &logs, opts)?;
    let jobs = study.jobs();
    // `tpv sweep CONFIG --set …`, quoted: the start of every command the scripts run.
    let mut sweep = format!(
        "{} sweep {}",
        shell_quote(&opts.tpv),
        shell_quote(&config.display().to_string())
    );
    for set in &opts.sets {
        sweep.push_str(&format!(" --set {}", shell_quote(set)));
    }
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
        let s = stage_script(study, stage, &ids, (&cwd, &logs), opts, &sweep);
        let path = dir.join(format!("stage{stage}.sbatch"));
        io::write_atomic(&path, s.as_bytes())?;
        written.push(path);
        stages.push(stage);
    }
    let cap = opts.max_parallel.map_or(String::new(), |m| format!("%{m}"));
    let mut submit = String::from(
        "#!/bin/bash\n# Submits the study's stages. Stage 2 starts when every stage-1 task has ended\n\
         # (afterany: a failed task strands only the stage-2 jobs that need its run, which fail\n\
         # naming it); then `bash resubmit.sh` re-runs only what did not finish.\n\
         set -euo pipefail\ncd \"$(dirname \"$0\")\"\nmkdir -p logs\n",
    );
    if stages.contains(&1) {
        submit.push_str("s1=$(sbatch --parsable stage1.sbatch)\necho \"stage 1: $s1\"\n");
        if stages.contains(&2) {
            submit.push_str(
                "s2=$(sbatch --parsable --dependency=afterany:\"$s1\" stage2.sbatch)\necho \"stage 2: $s2\"\n",
            );
        }
    } else if stages.contains(&2) {
        submit.push_str("s2=$(sbatch --parsable stage2.sbatch)\necho \"stage 2: $s2\"\n");
    }
    let done = format!(
        "when done: {} aggregate {}; to re-run what failed: bash {}",
        shell_quote(&opts.tpv),
        shell_quote(&study.output().display().to_string()),
        shell_quote(&logs.join("resubmit.sh").display().to_string())
    );
    submit.push_str(&format!("printf '%s\\n' {}\n", shell_quote(&done)));

    let resubmit = resubmit_script(&stages, &cwd, &sweep, &cap);
    let path = dir.join("resubmit.sh");
    io::write_atomic(&path, resubmit.as_bytes())?;
    written.push(path);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn time_limits_parse_in_slurms_forms() {
        for (line, secs) in [
            ("--time=30", Some(1800)),
            ("--time=5:30", Some(330)),
            ("-t 04:00:00", Some(14_400)),
            ("--time=1-12", Some(129_600)),
            ("--time 2-0:30", Some(174_600)),
            ("--time=1-00:00:10", Some(86_410)),
            ("--time=UNLIMITED", None),
            ("--partition=gpu", None),
        ] {
            assert_eq!(time_limit_s(&lines(&[line])), secs, "{line}");
        }
    }

    #[test]
    fn sigterm_before_the_limit_unless_given_or_the_limit_is_short() {
        assert!(signal_before_limit(&[]));
        assert!(signal_before_limit(&lines(&["--time=04:00:00"])));
        assert!(!signal_before_limit(&lines(&["--time=1"])));
        assert!(!signal_before_limit(&lines(&["--signal=USR1@30"])));
    }
}
