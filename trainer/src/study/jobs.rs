//! Running a study's jobs: training jobs through `train::run` (resumable), evaluation jobs
//! (addition with its λ search, cross-origin, 0-shot transfer) here; each writes its run file
//! atomically and last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde_json::json;
use tpv_shared::eval::EvalSet;
use tpv_shared::tasks::TaskSpec;
use tpv_shared::{MergeMethod, OriginRef, SoftPrompt, arith};

use tpv_shared::study::StudyFile;

use super::{InitMethod, Job, JobKind, Study, paper_lambdas, prompt_tuning_id};
use crate::config::Config;
use crate::data;
use crate::io;
use crate::models::{self, LoadedModel};
use crate::train::engine::{self, Encoded, EvalResult};
use crate::train::{self, RunOptions, stop};

/// Options of `tpv sweep`.
#[derive(Debug, Clone, Default)]
pub struct SweepOptions {
    /// Jobs at once (child processes).
    pub jobs: usize,
    /// The GPU of each worker slot (slot k: `gpus[k % len]`), given to its children as
    /// `CUDA_VISIBLE_DEVICES`; empty: every child uses the configured device.
    pub gpus: Vec<String>,
    /// The `--set` overrides, passed on to child processes.
    pub sets: Vec<String>,
    /// Stop after this many jobs ran (a partial study).
    pub max_jobs: Option<usize>,
    /// Test hook: abort the process at step S of the N-th job run (1-based), as a kill would.
    pub abort_in_job: Option<(usize, u64)>,
}

/// Writes `OUTPUT/study.json`: the study's name, config and every job (for aggregation).
pub fn write_manifest(study: &Study) -> Result<()> {
    let jobs = study.jobs();
    // The model every run uses (as the config resolves it), for the report to bundle or link.
    let model = jobs.iter().find_map(|j| match &j.kind {
        JobKind::PromptTuning { task, .. } | JobKind::Transfer { target: task, .. } => {
            study.task_config(task, j).ok().map(|c| c.model.path)
        }
        _ => None,
    });
    let file = StudyFile {
        format: tpv_shared::study::FORMAT.into(),
        version: tpv_shared::study::VERSION,
        name: study.study.name.clone(),
        config: study.path.display().to_string(),
        model,
        origins: study.study.origins.clone(),
        tasks: study.tuned_tasks(),
        study: serde_json::to_value(&study.study)?,
        jobs,
    };
    std::fs::create_dir_all(study.output())
        .with_context(|| format!("creating the study directory {}", study.output().display()))?;
    io::write_atomic(&study.output().join("study.json"), file.to_json()?.as_bytes())
}

/// The most records an eval set holds (the first of the test split).
pub const EVAL_SET_MAX: usize = 1000;

/// Writes `OUTPUT/examples/TASK.json` for every task a study evaluates: the test split its runs
/// are scored on (the first [`EVAL_SET_MAX`] records), its task spec and how examples are encoded,
/// so the report's Evaluate view (and `tpv eval --data`) scores them as the study did. A task whose
/// data does not load is skipped with a warning (its jobs report the error themselves).
pub fn write_eval_sets(study: &Study) -> Result<()> {
    let dir = study.output().join("examples");
    let mut done: Vec<String> = Vec::new();
    for job in study.jobs() {
        let task = match &job.kind {
            JobKind::PromptTuning { task, .. } => task,
            JobKind::Transfer { target, .. } => target,
            _ => continue,
        };
        if done.contains(task) {
            continue;
        }
        done.push(task.clone());
        let config = study.task_config(task, &job)?;
        let splits = match data::load(&config.data) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: no eval set for task {task}: {e:#}");
                continue;
            }
        };
        let split_size = splits.test.len();
        let set = EvalSet {
            format: EvalSet::FORMAT.into(),
            version: EvalSet::VERSION,
            name: task.clone(),
            split: "test".into(),
            split_size,
            task: splits.task,
            encode: train::encode_options(&config),
            max_new_tokens: config.train.max_new_tokens,
            scoring: config.train.scoring,
            records: splits.test.into_iter().take(EVAL_SET_MAX).collect(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        io::write_atomic(
            &dir.join(format!("{task}.json")),
            serde_json::to_string(&set)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// What a sweep did: jobs run (finished or failed), finished before, failed (with the jobs that
/// needed them), left to another process (a job whose lock another process holds, and the jobs
/// that need it), and the stop signal if one cut the sweep short.
#[derive(Debug, Clone, Default)]
pub struct SweepOutcome {
    pub ran: usize,
    pub skipped: usize,
    pub failed: Vec<String>,
    pub busy: Vec<String>,
    pub interrupted: Option<i32>,
}

impl SweepOutcome {
    /// Why `job` cannot run now: a dependency failed (it fails too) or runs in another process
    /// (it is left to a later sweep); recorded here.
    fn blocked(&mut self, job: &Job) -> Option<String> {
        if job.deps.iter().any(|d| self.failed.contains(d)) {
            self.failed.push(job.id.clone());
            return Some(format!("skipping {}: a dependency failed", job.id));
        }
        let busy = job.deps.iter().find(|d| self.busy.contains(d))?;
        let msg = format!("skipping {}: it needs {busy}, which runs in another process", job.id);
        self.busy.push(job.id.clone());
        Some(msg)
    }
}

/// Runs every unfinished job whose dependencies are finished, in order (`-j 1`, in this
/// process) or as child processes (`-j N`); returns (ran, skipped, failed ids). A sweep stopped by
/// a signal is an error here ([`sweep`] tells it apart).
pub fn run_all(study: &Study, opts: &SweepOptions) -> Result<(usize, usize, Vec<String>)> {
    let o = sweep(study, opts)?;
    if let Some(signal) = o.interrupted {
        bail!(
            "study {} interrupted by {}; running it again resumes",
            study.study.name,
            stop::signal_name(signal)
        );
    }
    Ok((o.ran, o.skipped, o.failed))
}

/// [`run_all`] with everything it found: which jobs another process runs, and whether a signal
/// (SIGTERM/SIGINT, with [`stop::install`]) stopped it. Stopped, the running jobs kept their
/// checkpoints and no new job started.
pub fn sweep(study: &Study, opts: &SweepOptions) -> Result<SweepOutcome> {
    write_manifest(study)?;
    write_eval_sets(study)?;
    let jobs = study.jobs();
    let skipped = jobs.iter().filter(|j| study.finished(j)).count();
    let todo: Vec<&Job> = jobs.iter().filter(|j| !study.finished(j)).collect();
    eprintln!(
        "study {}: {} jobs, {skipped} finished, {} to run",
        study.study.name,
        jobs.len(),
        todo.len()
    );
    let mut outcome = if opts.jobs <= 1 {
        run_in_order(study, &todo, opts)
    } else {
        run_parallel(study, todo.clone(), opts)?
    };
    outcome.skipped = skipped;
    // A signal that came when every job had finished anyway stopped nothing.
    if outcome.interrupted.is_none() && todo.iter().any(|j| !study.finished(j)) {
        outcome.interrupted = stop::requested();
    }
    Ok(outcome)
}

/// `-j 1`: the jobs one after the other in this process.
fn run_in_order(study: &Study, todo: &[&Job], opts: &SweepOptions) -> SweepOutcome {
    let mut out = SweepOutcome::default();
    let limit = opts.max_jobs.unwrap_or(usize::MAX);
    let mut progress = Progress::new(study, todo, 1);
    for (i, job) in todo.iter().enumerate() {
        if out.ran >= limit {
            break;
        }
        if let Some(signal) = stop::requested() {
            out.interrupted = Some(signal);
            break;
        }
        if let Some(why) = out.blocked(job) {
            eprintln!("{why}");
            progress.skip(i);
            continue;
        }
        let t = Instant::now();
        eprintln!("[{}/{}] {}", i + 1, todo.len(), job.id);
        let abort = opts
            .abort_in_job
            .and_then(|(n, step)| (n == out.ran + 1).then_some(step));
        match run_locked(study, job, abort) {
            Ok(JobOutcome::Done(_)) => {
                let secs = t.elapsed().as_secs_f64();
                progress.done(i, secs);
                eprintln!("  done in {secs:.1} s · {}", progress.line());
            }
            Ok(JobOutcome::Busy(why)) => {
                eprintln!("  {why}");
                out.busy.push(job.id.clone());
                progress.skip(i);
                continue;
            }
            Err(e) if stop::requested().is_some() => {
                eprintln!("  {e:#}");
                out.interrupted = stop::requested();
                break;
            }
            Err(e) => {
                eprintln!("  failed: {e:#}");
                out.failed.push(job.id.clone());
                progress.skip(i);
            }
        }
        out.ran += 1;
    }
    out
}

/// The study-level progress line: jobs done of the total, elapsed time and an estimate of the
/// time left. Each remaining job's time is its work ([`Study::work`]) at the seconds per unit of
/// work that finished jobs of its kind took (of all finished jobs for a kind not yet seen),
/// divided among the worker slots (never less than the longest job left).
struct Progress {
    start: Instant,
    kinds: Vec<&'static str>,
    work: Vec<f64>,
    left: Vec<bool>,
    /// Seconds and work of the finished jobs, per kind.
    times: BTreeMap<&'static str, (f64, f64)>,
    done: usize,
    slots: usize,
}

/// A job's kind for time estimates: evaluation-only jobs take far less than training ones.
fn time_class(job: &Job) -> &'static str {
    match &job.kind {
        JobKind::Transfer { shots: 0, .. } => "transfer_eval",
        JobKind::Transfer { .. } => "transfer_train",
        kind => kind.experiment(),
    }
}

impl Progress {
    fn new(study: &Study, todo: &[&Job], slots: usize) -> Self {
        Self {
            start: Instant::now(),
            kinds: todo.iter().map(|j| time_class(j)).collect(),
            work: todo.iter().map(|j| study.work(j).max(1.0)).collect(),
            left: vec![true; todo.len()],
            times: BTreeMap::new(),
            done: 0,
            slots: slots.max(1),
        }
    }

    fn done(&mut self, i: usize, secs: f64) {
        self.left[i] = false;
        self.done += 1;
        let t = self.times.entry(self.kinds[i]).or_insert((0.0, 0.0));
        t.0 += secs;
        t.1 += self.work[i];
    }

    fn skip(&mut self, i: usize) {
        self.left[i] = false;
    }

    /// Seconds left, once a job has finished.
    fn eta(&self) -> Option<f64> {
        let (all_s, all_w) = self.times.values().fold((0.0, 0.0), |(s, w), (a, b)| (s + a, w + b));
        if all_w <= 0.0 {
            return None;
        }
        let rate = |kind: &str| self.times.get(kind).map_or(all_s / all_w, |(s, w)| s / w);
        let times: Vec<f64> = (0..self.kinds.len())
            .filter(|&i| self.left[i])
            .map(|i| self.work[i] * rate(self.kinds[i]))
            .collect();
        // The slots share the work, but no job is split: the longest one left bounds it below.
        let longest = times.iter().copied().fold(0.0, f64::max);
        Some((times.iter().sum::<f64>() / self.slots as f64).max(longest))
    }

    fn line(&self) -> String {
        format!(
            "{}/{} jobs, {} elapsed, {}",
            self.done,
            self.kinds.len(),
            clock(self.start.elapsed().as_secs_f64()),
            self.eta().map_or_else(
                || "estimating the time left".to_owned(),
                |s| format!("~{} left", clock(s))
            )
        )
    }
}

/// `m:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

/// How a job run by a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Failed,
    /// Another process holds its lock.
    Busy,
    /// Stopped by the sweep's signal (its checkpoint kept).
    Interrupted,
}

/// What a slot does next.
enum Next {
    Run(Job),
    Wait,
    Stop,
}

/// The scheduler's state, shared by the slots.
#[derive(Default)]
struct Queue {
    waiting: Vec<Job>,
    running: Vec<String>,
    out: SweepOutcome,
}

impl Queue {
    /// The next job whose dependencies are finished (or [`Next::Stop`]: the limit reached, a stop
    /// signal, nothing left); the jobs that cannot run any more are set aside first and returned
    /// with the reason.
    fn take(&mut self, limit: usize) -> (Next, Vec<(String, String)>) {
        if self.out.ran >= limit || stop::requested().is_some() {
            return (Next::Stop, Vec::new());
        }
        let mut aside = Vec::new();
        for job in std::mem::take(&mut self.waiting) {
            match self.out.blocked(&job) {
                Some(why) => aside.push((job.id, why)),
                None => self.waiting.push(job),
            }
        }
        if self.waiting.is_empty() {
            return (Next::Stop, aside);
        }
        let ready = self.waiting.iter().position(|j| {
            j.deps
                .iter()
                .all(|d| !self.running.contains(d) && !self.waiting.iter().any(|w| &w.id == d))
        });
        let Some(i) = ready else {
            return (Next::Wait, aside);
        };
        let job = self.waiting.remove(i);
        self.running.push(job.id.clone());
        self.out.ran += 1;
        (Next::Run(job), aside)
    }

    fn finish(&mut self, job: &Job, end: End) {
        self.running.retain(|r| r != &job.id);
        match end {
            End::Done => {}
            End::Failed => self.out.failed.push(job.id.clone()),
            End::Busy | End::Interrupted => {
                // Not run here (a busy job) or not to its end: neither counts against --max-jobs.
                self.out.ran = self.out.ran.saturating_sub(1);
                if end == End::Busy {
                    self.out.busy.push(job.id.clone());
                }
            }
        }
    }
}

/// What the slots of [`run_parallel`] share.
struct Slots<'a> {
    study: &'a Study,
    opts: &'a SweepOptions,
    exe: PathBuf,
    queue: Mutex<Queue>,
    progress: Mutex<Progress>,
    index: BTreeMap<String, usize>,
    total: usize,
    cuda: bool,
    threads_per_job: Option<usize>,
}

/// `-j N`: a scheduler thread per slot takes the next job whose dependencies are finished and runs
/// it as `tpv sweep CONFIG --job ID` in a child process. On SIGTERM/SIGINT no job starts any more
/// and the signal goes on to the running children (a second one kills them); the sweep returns
/// once they have stopped.
fn run_parallel(study: &Study, todo: Vec<&Job>, opts: &SweepOptions) -> Result<SweepOutcome> {
    let exe = std::env::current_exe().context("locating the tpv executable")?;
    // The cores shared among the slots (each child's thread pool), unless the user set it.
    let threads_per_job = std::env::var_os("RAYON_NUM_THREADS").is_none().then(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        (cores / opts.jobs).max(1)
    });
    let slots = Slots {
        study,
        opts,
        exe,
        progress: Mutex::new(Progress::new(study, &todo, opts.jobs)),
        index: todo.iter().enumerate().map(|(i, j)| (j.id.clone(), i)).collect(),
        total: todo.len(),
        queue: Mutex::new(Queue {
            waiting: todo.into_iter().cloned().collect(),
            ..Default::default()
        }),
        cuda: study_device(study).starts_with("cuda"),
        threads_per_job,
    };
    std::thread::scope(|scope| {
        for slot in 0..opts.jobs {
            let gpu = (!opts.gpus.is_empty()).then(|| opts.gpus[slot % opts.gpus.len()].clone());
            let slots = &slots;
            scope.spawn(move || slots.run(gpu.as_deref()));
        }
    });
    let q = slots
        .queue
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a scheduler thread panicked"))?;
    Ok(q.out)
}

impl Slots<'_> {
    /// One slot's loop: take a job, run it in a child process, record how it ended.
    fn run(&self, gpu: Option<&str>) {
        loop {
            let next = {
                let Ok(mut q) = self.queue.lock() else { return };
                let (next, aside) = q.take(self.opts.max_jobs.unwrap_or(usize::MAX));
                if let Ok(mut p) = self.progress.lock() {
                    for (id, why) in &aside {
                        eprintln!("{why}");
                        if let Some(&i) = self.index.get(id) {
                            p.skip(i);
                        }
                    }
                }
                if let Next::Run(job) = &next {
                    let on = gpu.map_or(String::new(), |g| format!(" on GPU {g}"));
                    eprintln!("[{}/{}] {}{on}", q.out.ran, self.total, job.id);
                }
                next
            };
            let job = match next {
                Next::Run(job) => job,
                Next::Wait => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    continue;
                }
                Next::Stop => return,
            };
            let t = Instant::now();
            let mut cmd = child_command(
                &self.exe,
                self.study,
                &job,
                self.opts,
                gpu,
                self.cuda,
                self.threads_per_job,
            );
            let end = run_child(&mut cmd, self.study, &job);
            if let Ok(mut q) = self.queue.lock() {
                q.finish(&job, end);
            }
            if let (Ok(mut p), Some(&i)) = (self.progress.lock(), self.index.get(&job.id)) {
                if end == End::Done {
                    let secs = t.elapsed().as_secs_f64();
                    p.done(i, secs);
                    eprintln!("  {} done in {secs:.1} s · {}", job.id, p.line());
                } else {
                    p.skip(i);
                    let how = match end {
                        End::Busy => "is running in another process; skipped",
                        End::Interrupted => "stopped (its last checkpoint kept)",
                        _ => "failed",
                    };
                    eprintln!("  {} {how} · {}", job.id, p.line());
                }
            }
        }
    }
}

/// Runs a slot's child to its end, passing the sweep's stop signals on (the first as it came, a
/// second as SIGKILL).
fn run_child(cmd: &mut Command, study: &Study, job: &Job) -> End {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  {}: cannot start tpv: {e}", job.id);
            return End::Failed;
        }
    };
    let mut forwarded = 0;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("  {}: waiting for its process: {e}", job.id);
                break None;
            }
        }
        let signals = stop::count();
        if signals > forwarded {
            forwarded = signals;
            let sent = if signals == 1 {
                let signal = stop::requested().unwrap_or(stop::SIGTERM);
                eprintln!(
                    "  stopping {} ({} forwarded: it writes a checkpoint and stops; a second signal kills it)",
                    job.id,
                    stop::signal_name(signal)
                );
                stop::send(child.id(), signal)
            } else {
                eprintln!("  killing {}", job.id);
                child.kill()
            };
            if let Err(e) = sent {
                eprintln!("  {}: signalling process {}: {e}", job.id, child.id());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    match status {
        Some(s) if s.success() && study.finished(job) => End::Done,
        Some(s) if s.code() == Some(BUSY_EXIT) => End::Busy,
        _ if stop::requested().is_some() => End::Interrupted,
        _ => End::Failed,
    }
}

/// The child process that runs `job` in a worker slot: `tpv sweep CONFIG --job ID` with the
/// sweep's overrides, the slot's GPU (seen alone, as device 0) and its share of the cores; its
/// stdout and progress bar silenced (the slot reports the job).
fn child_command(
    exe: &Path,
    study: &Study,
    job: &Job,
    opts: &SweepOptions,
    gpu: Option<&str>,
    cuda: bool,
    threads: Option<usize>,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("sweep").arg(&study.path).arg("--job").arg(&job.id);
    for s in &opts.sets {
        cmd.arg("--set").arg(s);
    }
    if let Some(g) = gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", g);
        if cuda {
            cmd.arg("--set").arg("model.device=\"cuda:0\"");
        }
    }
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    cmd.stdout(std::process::Stdio::null())
        .env(crate::train::NO_PROGRESS_BAR, "1")
        .env(SWEEP_CHILD, "1");
    // Only where the sweep forwards signals (train::stop): elsewhere a child in its own group
    // would miss the terminal's Ctrl-C that nobody passes on.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Its own process group: a terminal's Ctrl-C reaches the sweep alone, which passes it on
        // once (a child that got it twice could not tell a second Ctrl-C from the same one).
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    die_with_parent(&mut cmd);
    cmd
}

/// Set in a sweep's child processes: a job whose lock another process holds exits with
/// [`BUSY_EXIT`] (not a failure), and a second stop signal does not kill it at once.
pub const SWEEP_CHILD: &str = "TPV_SWEEP_CHILD";

/// The exit status of `tpv sweep --job ID` in a sweep's child when another process runs the job
/// (EX_TEMPFAIL).
pub const BUSY_EXIT: i32 = 75;

/// A child whose sweep dies unannounced (SIGKILL, a crash) gets SIGTERM, so it stops at a
/// checkpoint instead of training on with nobody waiting for it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The sweep died before the prctl: start nothing.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn die_with_parent(_cmd: &mut Command) {}

/// The device the study's runs use (`model.device` of its base config; `cpu` by default).
pub fn study_device(study: &Study) -> String {
    study
        .base
        .get("model")
        .and_then(|m| m.get("device"))
        .and_then(toml::Value::as_str)
        .unwrap_or("cpu")
        .to_owned()
}

/// The GPUs to spread a sweep's worker slots over: `--gpus` as given (indexes among the visible
/// GPUs; `none`: no spreading), else, when the study runs on plain `cuda`, every visible one
/// (`CUDA_VISIBLE_DEVICES`'s entries, or `nvidia-smi --list-gpus`' count); nothing on the CPU or
/// on a pinned `cuda:N`.
pub fn sweep_gpus(study: &Study, given: Option<&str>) -> Result<Vec<String>> {
    let visible = crate::models::visible_gpus();
    if let Some(list) = given {
        if list == "none" {
            return Ok(Vec::new());
        }
        let gpus: Vec<String> = list.split(',').map(|g| g.trim().to_owned()).collect();
        if gpus
            .iter()
            .any(|g| g.is_empty() || !g.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            bail!("--gpus {list:?}: give GPU indexes or UUIDs, comma-separated (or `none`)");
        }
        // Indexes count the GPUs this process sees, as cuda:N does.
        return Ok(match &visible {
            Some(v) => gpus
                .iter()
                .map(|g| {
                    g.parse::<usize>()
                        .ok()
                        .and_then(|i| v.get(i).cloned())
                        .unwrap_or_else(|| g.clone())
                })
                .collect(),
            None => gpus,
        });
    }
    if study_device(study) != "cuda" {
        return Ok(Vec::new());
    }
    if let Some(v) = visible {
        return Ok(v);
    }
    let listed = Command::new("nvidia-smi")
        .arg("--list-gpus")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count()
        });
    Ok((0..listed).map(|i| i.to_string()).collect())
}

/// The lock file in a job's run directory.
pub const LOCK_FILE: &str = ".lock";

/// A job's exclusive lock: flock(2) on `RUN_DIR/.lock`, held while this value lives and released
/// by the kernel when the process ends, however it ends. The file holds the holder's process id
/// (for the message of the process that finds it taken) and stays.
#[derive(Debug)]
pub struct JobLock {
    _file: std::fs::File,
}

/// Takes the lock of the job whose run directory is `dir` (creating both); `None` when another
/// process holds it. The one lock of every path that runs a job ([`run_locked`]: sweep slots,
/// `--job ID`, Slurm array tasks), so one job never runs twice at once.
pub fn lock_job(dir: &Path) -> Result<Option<JobLock>> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the run directory {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the job lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {} (flock)", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing the process id into {}", path.display()))?;
    Ok(Some(JobLock { _file: file }))
}

/// How [`run_locked`] left a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Finished (now or before): its run file.
    Done(PathBuf),
    /// Another process holds its lock; the message says which lock (and process).
    Busy(String),
}

/// Runs one job under its lock ([`lock_job`]): a finished job is left as it is, one that another
/// process runs is skipped (not a failure), anything else runs (resuming it if it was
/// interrupted). `abort_after_step` is the test hook of `train::run`.
pub fn run_locked(study: &Study, job: &Job, abort_after_step: Option<u64>) -> Result<JobOutcome> {
    let dir = study.job_dir(job);
    if study.finished(job) {
        return Ok(JobOutcome::Done(train::prompt_path(&dir)));
    }
    let Some(_lock) = lock_job(&dir).with_context(|| format!("job {}", job.id))? else {
        let lock = dir.join(LOCK_FILE);
        let pid = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map_or(String::new(), |p| format!("held by process {p}, "));
        return Ok(JobOutcome::Busy(format!(
            "job {} is running in another process ({pid}lock {}); skipped",
            job.id,
            lock.display()
        )));
    };
    let ckpt = train::checkpoint_path(&dir);
    if ckpt.exists() {
        match train::checkpoint::read(&ckpt) {
            Ok(c) => eprintln!("resuming job {} from its checkpoint at step {}", job.id, c.step),
            Err(e) => eprintln!("job {}: its checkpoint does not read: {e:#}", job.id),
        }
    }
    // Another process may have finished it before this one took the lock: run_job checks.
    run_job(study, job, abort_after_step).map(JobOutcome::Done)
}

/// Runs one job (resuming it if it was interrupted); returns its run file. `abort_after_step`
/// is the test hook of `train::run`. Without the job's lock: see [`run_locked`].
fn run_job(study: &Study, job: &Job, abort_after_step: Option<u64>) -> Result<PathBuf> {
    let dir = study.job_dir(job);
    let out = train::prompt_path(&dir);
    if study.finished(job) {
        return Ok(out);
    }
    for d in &job.deps {
        let dep_file = train::prompt_path(&study.output().join(d));
        if !dep_file.exists() {
            bail!("{} needs {d}, which has not finished", job.id);
        }
    }
    let resume = RunOptions {
        resume: true,
        abort_after_step,
        ..Default::default()
    };
    let result = match &job.kind {
        JobKind::PromptTuning { .. } | JobKind::MultiTask { .. } => {
            let config = study.train_config(job, None)?.context("not a training job")?;
            train::run(&config, &resume)
        }
        JobKind::Transfer {
            target,
            init,
            source,
            shots,
            origin,
        } => {
            let init_prompt = transfer_init(study, job, *init, source.as_deref(), *origin)?;
            if *shots == 0 && *init == InitMethod::Attempt {
                let config = study.task_config(target, job)?;
                untrained_attempt(&config, job, &out)
            } else if *shots == 0 {
                let config = study.task_config(target, job)?;
                let ev = Evaluation::new(&config)?;
                let mut prompt = match init_prompt {
                    Some(p) => p,
                    None => ev.origin(&config, job)?,
                };
                let (task, sets) = ev.sets(&config)?;
                let res = ev.eval(&prompt_theta(&prompt), &sets.test, &task, &config, false)?;
                prompt.meta.metrics = prefixed("test_", &res);
                prompt.meta.config = Some(json!({ "study_job": job }));
                write(&out, &prompt)
            } else {
                let init_file = match init_prompt {
                    Some(p) => {
                        let f = dir.join("init.safetensors");
                        io::write_run(&f, &p)?;
                        Some(f)
                    }
                    None => None,
                };
                let config = study
                    .train_config(job, init_file.as_deref())?
                    .context("not a training job")?;
                train::run(&config, &resume)
            }
        }
        JobKind::Addition { tasks, origin } => addition(study, job, tasks, *origin).map(|()| out.clone()),
        JobKind::CrossOrigin { task, origin, from } => {
            let own = load_run(study, &prompt_tuning_id(task, *origin))?;
            let other = load_run(study, &prompt_tuning_id(task, *from))?;
            let theta0 = origin_of(&own)?;
            let mut combined = arith::combine(&theta0, &[&other], &[], 1.0, &MergeMethod::Sum)?;
            let config = study.task_config(task, job)?;
            let ev = Evaluation::new(&config)?;
            let (spec, sets) = ev.sets(&config)?;
            let res = ev.eval(&prompt_theta(&combined), &sets.test, &spec, &config, false)?;
            combined.meta.metrics = prefixed("test_", &res);
            combined.meta.tasks = vec![task.clone()];
            combined.meta.config = Some(json!({ "study_job": job }));
            write(&out, &combined)
        }
    };
    result.with_context(|| format!("job {}", job.id))
}

/// ATTEMPT at 0 shots: the module a trained run starts from (target prompt θ₀, fresh attention
/// over the sources) scored on the target's test split, written as an ATTEMPT run.
fn untrained_attempt(config: &Config, job: &Job, out: &Path) -> Result<PathBuf> {
    let ev = Evaluation::new(config)?;
    let d = ev.loaded.model.hidden_size();
    let module = train::attempt_module(config, (config.prompt.virtual_tokens, d))?
        .context("an ATTEMPT job without [attempt]")?;
    let mut prompt = ev.origin(config, job)?;
    let (task, sets) = ev.sets(config)?;
    let (res, attention) = engine::evaluate_attempt(
        &ev.loaded,
        &prompt.values,
        &module,
        &sets.test,
        &task,
        train::eval_options(config, false),
    )?;
    prompt.origin = Some(prompt.values.clone());
    prompt.meta.kind = tpv_shared::PromptKind::Attempt;
    prompt.meta.name = None;
    prompt.meta.tasks = vec![task.name.clone()];
    prompt.meta.metrics = prefixed("test_", &res);
    prompt.meta.config = Some(json!({
        "study_job": job,
        "attempt": { "test_attention": train::attention_json(&module, &attention) },
    }));
    prompt.attempt = Some(Box::new(module));
    write(out, &prompt)
}

fn write(path: &Path, prompt: &SoftPrompt) -> Result<PathBuf> {
    io::write_run(path, prompt)?;
    Ok(path.to_path_buf())
}

fn load_run(study: &Study, id: &str) -> Result<SoftPrompt> {
    io::load_prompt(&train::prompt_path(&study.output().join(id)))
}

/// θ₀ of a task prompt run, as an origin prompt (model and layout kept).
fn origin_of(run: &SoftPrompt) -> Result<SoftPrompt> {
    let values = run
        .origin_values()
        .with_context(|| format!("{} has no origin stored", run.label()))?
        .clone();
    let mut o = SoftPrompt::origin(
        values,
        run.meta.origin.clone().unwrap_or_else(|| unnamed_origin("origin")),
    );
    o.meta.model.clone_from(&run.meta.model);
    o.meta.layout = run.meta.layout;
    Ok(o)
}

/// The init prompt of a transfer job (`None`: the sampled origin itself).
fn transfer_init(
    study: &Study,
    job: &Job,
    init: InitMethod,
    source: Option<&str>,
    origin: usize,
) -> Result<Option<SoftPrompt>> {
    let tr = study.study.transfer.as_ref().context("no [study.transfer]")?;
    Ok(match init {
        // ATTEMPT's target prompt starts from the sampled origin (its sources are the config's).
        InitMethod::Random | InitMethod::Attempt => None,
        InitMethod::Spot => Some(load_run(
            study,
            &prompt_tuning_id(source.context("a SPoT job without a source")?, origin),
        )?),
        InitMethod::Multi => Some(load_run(study, job.deps.first().context("no multi-task dependency")?)?),
        InitMethod::TpvSum | InitMethod::LearnedCombination => {
            let runs: Vec<SoftPrompt> = tr
                .sources
                .iter()
                .map(|s| load_run(study, &prompt_tuning_id(s, origin)))
                .collect::<Result<_>>()?;
            let theta0 = origin_of(&runs[0])?;
            let refs: Vec<&SoftPrompt> = runs.iter().collect();
            let shots = match &job.kind {
                JobKind::Transfer { shots, .. } => *shots,
                _ => 0,
            };
            if init == InitMethod::TpvSum || shots == 0 {
                return Ok(Some(arith::combine(&theta0, &refs, &[], 1.0, &MergeMethod::Sum)?));
            }
            // The weights learned on the shots this job trains on (the same sample).
            let config = study.train_config(job, None)?.context("not a training job")?;
            let (weights, summary) = train::combination::learn_on(
                &config,
                &theta0,
                &refs,
                (tr.combination_steps, tr.combination_learning_rate),
            )?;
            let mut p = arith::combine(&theta0, &refs, &weights, 1.0, &MergeMethod::Sum)?;
            p.meta.config = Some(json!({ "learned_combination": summary }));
            Some(p)
        }
    })
}

fn unnamed_origin(id: &str) -> OriginRef {
    OriginRef {
        id: id.to_owned(),
        seed: None,
        index: None,
        sampling: None,
    }
}

fn prompt_theta(p: &SoftPrompt) -> (Vec<f32>, usize) {
    (p.values.as_slice().to_vec(), p.shape()[0])
}

fn prefixed(prefix: &str, res: &EvalResult) -> BTreeMap<String, f64> {
    let mut m: BTreeMap<String, f64> = res.metrics.iter().map(|(k, v)| (format!("{prefix}{k}"), *v)).collect();
    if res.loss.is_finite() {
        m.insert(format!("{prefix}loss"), res.loss);
    }
    m
}

/// The encoded validation and test examples of one task.
pub struct EvalSets {
    pub validation: Vec<Encoded>,
    pub test: Vec<Encoded>,
}

/// A loaded model for evaluating prompts on tasks' data.
pub struct Evaluation {
    loaded: LoadedModel,
    device: candle_core::Device,
}

impl Evaluation {
    pub fn new(config: &Config) -> Result<Self> {
        let device = models::device(&config.model.device)?;
        let dtype = models::dtype(&config.model.dtype)?;
        let loaded = models::load_cached(&config.model.path, dtype, &device)
            .with_context(|| format!("loading model {}", config.model.path))?;
        Ok(Self { loaded, device })
    }

    /// The sampled origin of a job (the random init at 0 shots).
    fn origin(&self, config: &Config, job: &Job) -> Result<SoftPrompt> {
        let (values, origin) = train::origin(config, &self.loaded, self.loaded.model.hidden_size())?;
        let mut p = SoftPrompt::origin(
            values,
            origin.unwrap_or_else(|| unnamed_origin(&format!("origin{}", job.origin()))),
        );
        p.meta.name = Some(format!("origin{}", job.origin()));
        p.meta.model = Some(tpv_shared::ModelRef {
            id: self.loaded.id.clone(),
            revision: None,
        });
        Ok(p)
    }

    pub fn sets(&self, config: &Config) -> Result<(TaskSpec, EvalSets)> {
        let splits = data::load(&config.data).context("loading data")?;
        let opts = train::encode_options(config);
        let sets = EvalSets {
            validation: train::encode(&self.loaded, &splits.task, &splits.validation, &opts)?,
            test: train::encode(&self.loaded, &splits.task, &splits.test, &opts)?,
        };
        Ok((splits.task, sets))
    }

    /// Scores each of `thetas` on `examples` in one batched pass (rows mix the prompts); the loss
    /// of generation (a second forward pass) only where it is reported.
    pub fn eval_many(
        &self,
        thetas: &[(Vec<f32>, usize)],
        examples: &[Encoded],
        task: &TaskSpec,
        config: &Config,
        with_loss: bool,
    ) -> Result<Vec<EvalResult>> {
        let d = self.loaded.model.hidden_size();
        let tensors: Vec<Tensor> = thetas
            .iter()
            .map(|(v, r)| Tensor::from_slice(v, (*r, d), &self.device))
            .collect::<candle_core::Result<_>>()?;
        let refs: Vec<&Tensor> = tensors.iter().collect();
        engine::evaluate(
            &self.loaded,
            &refs,
            examples,
            task,
            train::eval_options(config, with_loss),
        )
    }

    /// [`Self::eval_many`] for one prompt.
    pub fn eval(
        &self,
        theta: &(Vec<f32>, usize),
        examples: &[Encoded],
        task: &TaskSpec,
        config: &Config,
        with_loss: bool,
    ) -> Result<EvalResult> {
        self.eval_many(std::slice::from_ref(theta), examples, task, config, with_loss)?
            .pop()
            .context("no evaluation result")
    }
}

/// The λ grid of the search: one shared λ, or one per vector (the grid's product).
fn lambda_grid(lambdas: &[f64], n: usize, per_vector: bool) -> Vec<Vec<f64>> {
    if !per_vector {
        return lambdas.iter().map(|&l| vec![l]).collect();
    }
    let mut out: Vec<Vec<f64>> = vec![vec![]];
    for _ in 0..n {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                lambdas.iter().map(move |&l| {
                    let mut v = prefix.clone();
                    v.push(l);
                    v
                })
            })
            .collect();
    }
    out
}

/// Addition: for each λ (or λ vector) of the grid, θ₀ + merge(λ·τ) on every task's validation
/// split; the best mean score wins (ties: the smaller λ, as in the paper), then the test splits.
fn addition(study: &Study, job: &Job, tasks: &[String], origin: usize) -> Result<()> {
    let a = study.study.addition.as_ref().context("no [study.addition]")?;
    let runs: Vec<SoftPrompt> = tasks
        .iter()
        .map(|t| load_run(study, &prompt_tuning_id(t, origin)))
        .collect::<Result<_>>()?;
    let theta0 = origin_of(&runs[0])?;
    let refs: Vec<&SoftPrompt> = runs.iter().collect();
    let method = a.merge.unwrap_or(MergeMethod::Sum);
    let lambdas = a.lambdas.clone().unwrap_or_else(paper_lambdas);
    let grid = lambda_grid(&lambdas, tasks.len(), a.per_vector);

    let configs: Vec<Config> = tasks.iter().map(|t| study.task_config(t, job)).collect::<Result<_>>()?;
    let ev = Evaluation::new(&configs[0])?;
    let data: Vec<(TaskSpec, EvalSets)> = configs.iter().map(|c| ev.sets(c)).collect::<Result<_>>()?;
    let combine = |l: &[f64]| -> Result<SoftPrompt> {
        let (weights, lambda) = if l.len() == 1 {
            (vec![], l[0])
        } else {
            (l.to_vec(), 1.0)
        };
        Ok(arith::combine(&theta0, &refs, &weights, lambda, &method)?)
    };
    // Every λ candidate on every task's validation split: one batched pass per task.
    let candidates: Vec<(Vec<f32>, usize)> = grid
        .iter()
        .map(|l| Ok(prompt_theta(&combine(l)?)))
        .collect::<Result<_>>()?;
    let mut per_task: Vec<Vec<f64>> = Vec::new();
    for ((task, sets), config) in data.iter().zip(&configs) {
        let res = ev.eval_many(&candidates, &sets.validation, task, config, false)?;
        per_task.push(res.iter().map(|r| task.primary_score(&r.metrics)).collect());
    }
    let mut best: Option<(f64, Vec<f64>)> = None;
    let mut search = Vec::new();
    for (i, l) in grid.iter().enumerate() {
        let scores: Vec<f64> = per_task.iter().map(|s| s[i]).collect();
        let mean = tpv_shared::stats::mean(&scores);
        search.push((l.clone(), mean, scores));
        let better = match &best {
            None => true,
            // Strictly better only: the grid runs from small to large λ, so ties keep the smaller.
            Some((b, _)) => mean > *b || (b.is_nan() && !mean.is_nan()),
        };
        if better {
            best = Some((mean, l.clone()));
        }
    }
    let (valid_score, chosen) = best.context("empty λ grid")?;
    let chosen_scores = search
        .iter()
        .find(|(l, _, _)| *l == chosen)
        .map(|(_, _, s)| s.clone())
        .unwrap_or_default();
    let mut combined = combine(&chosen)?;
    let theta = prompt_theta(&combined);
    let mut metrics = BTreeMap::new();
    for (((task, sets), config), vscore) in data.iter().zip(&configs).zip(&chosen_scores) {
        let res = ev.eval(&theta, &sets.test, task, config, false)?;
        for (k, v) in prefixed("test_", &res) {
            metrics.insert(format!("{}:{k}", task.name), v);
        }
        metrics.insert(format!("{}:validation_score", task.name), *vscore);
    }
    metrics.insert("validation_mean_score".into(), valid_score);
    for (i, l) in chosen.iter().enumerate() {
        let key = if chosen.len() == 1 {
            "lambda".to_owned()
        } else {
            format!("lambda_{i}")
        };
        metrics.insert(key, *l);
    }
    combined.meta.metrics = metrics;
    combined.meta.tasks = tasks.to_vec();
    combined.meta.config = Some(json!({
        "study_job": job,
        "lambda_search": search
            .iter()
            .map(|(l, s, per_task)| json!({ "lambda": l, "validation_mean_score": s, "validation_scores": per_task }))
            .collect::<Vec<_>>(),
    }));
    write(&train::prompt_path(&study.job_dir(job)), &combined)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_time_left_weighs_each_job_by_its_work_and_kind() {
        let study = Study::from_str(
            crate::commands::demo::DEMO_STUDY,
            Path::new("configs/demo/study.toml"),
            &[],
        )
        .unwrap();
        let jobs = study.jobs();
        let pick = |id: &str| jobs.iter().find(|j| j.id == id).unwrap();
        let todo = vec![
            pick("prompt_tuning/rt_polarity/origin0"),
            pick("prompt_tuning/rt_polarity/origin1"),
            pick("transfer/uci_amazon/random/0shot/origin0"),
        ];
        let mut p = Progress::new(&study, &todo, 1);
        assert_eq!(p.eta(), None);
        assert!(p.line().ends_with("estimating the time left"), "{}", p.line());
        // 1,950 units of work in 195 s: 0.1 s a unit for the next prompt tuning (1,850 units) and,
        // with no evaluation job finished yet, for the evaluation job (100 units) too — not the
        // 195 s of a training job.
        p.done(0, 195.0);
        let eta = p.eta().unwrap();
        assert!((eta - (185.0 + 10.0)).abs() < 1e-9, "{eta}");
        // Two slots share what is left, but one job is not split between them: 185 s, not 97.5.
        let mut two = Progress::new(&study, &todo, 2);
        two.done(0, 195.0);
        assert!((two.eta().unwrap() - 185.0).abs() < 1e-9);
        // With the long job done too, the evaluation job's 10 s is all that is left.
        two.done(1, 185.0);
        assert!((two.eta().unwrap() - 10.0).abs() < 1e-9);
        // Once a job of a kind finished, its kind's own rate counts.
        p.done(2, 20.0);
        assert!((p.eta().unwrap() - 185.0).abs() < 1e-9);
        assert!(p.line().starts_with("2/3 jobs"), "{}", p.line());
    }
}
