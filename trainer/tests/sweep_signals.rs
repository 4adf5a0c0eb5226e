//! `tpv sweep` and signals, and the job lock (issue item 9): a sweep stopped by SIGTERM/SIGINT
//! stops its children at a checkpoint, waits for them and exits 128 + the signal, leaving no
//! process behind; running it again resumes and ends where an uninterrupted sweep ends. A job
//! whose lock another process holds is skipped (with the jobs that need it), not failed, and its
//! run directory is left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/run_result.rs"]
mod run_result;
use run_result::result;

use serde_json::Value;
use tpv_trainer::study::jobs::lock_job;
use tpv_trainer::train::stop;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap()
}

/// The tiny fixture study (tests/fixtures/study) in `dir`, its output in `dir/out`.
fn fixture_study(dir: &Path) -> PathBuf {
    let fixture = root().join("tests/fixtures/study");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "jsonl") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(fixture.join("study.toml"))
        .unwrap()
        .replace(
            "output = \"runs/tiny\"",
            &format!("output = \"{}\"", dir.join("out").display()),
        )
        .replace(
            "path = \"../models/",
            &format!("path = \"{}/", root().join("tests/fixtures/models").display()),
        );
    assert!(text.contains(&dir.join("out").display().to_string()));
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn tpv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tpv"))
}

/// The processes whose command line mentions `needle` (the test's own directory), but this one.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != me && cmdline.contains(needle) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// The children of `pid` (from /proc/*/stat's ppid).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: the comm may hold spaces, so read after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` at most `limit`; killed (and the test failed) beyond.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            panic!("tpv sweep did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what the test left running (a failed assertion must not leave trainers behind).
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(&self.0) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

const JOBS: [&str; 2] = ["prompt_tuning/a/origin0", "prompt_tuning/b/origin0"];

/// The probe of item 9: `tpv sweep -j 2` got SIGTERM, exited, and left both children training
/// under PID 1. Now the children stop at a checkpoint, the sweep exits 143 once they have, and
/// nothing is left running; `-j 1` stops the same way on SIGINT (130). Run again, the sweep
/// resumes both jobs and ends with the runs of an uninterrupted sweep.
#[test]
fn sigterm_stops_a_parallel_sweep_and_its_children_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let _reaper = Reaper(dir.display().to_string());
    let config = fixture_study(&dir);
    let out = dir.join("out");
    // Two prompt-tuning jobs long enough to be caught training (checkpoints every 25 steps).
    let sets = [
        "--set",
        "study.set.optim.max_steps=1500",
        "--set",
        "train.eval_every=25",
        "--max-jobs",
        "2",
    ];
    let sweep = |j: &str| {
        let mut cmd = tpv();
        cmd.args(["sweep", "-j", j]).arg(&config).args(sets);
        cmd
    };
    let ckpt = |id: &str| out.join(id).join("checkpoint.safetensors");
    let step = |id: &str| tpv_trainer::train::checkpoint::read(&ckpt(id)).unwrap().step;

    let log = dir.join("sweep.log");
    let mut parent = sweep("2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("both jobs train in child processes", Duration::from_secs(180), || {
        JOBS.iter().all(|id| ckpt(id).exists()) && children_of(parent.id()).len() == 2
    });
    stop::send(parent.id(), stop::SIGTERM).unwrap();
    let status = wait_exit(&mut parent, Duration::from_secs(60));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(
        err.contains("interrupted by SIGTERM") && err.contains("again resumes"),
        "{err}"
    );
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "processes left after the sweep exited: {left:?}");
    for id in JOBS {
        assert!(ckpt(id).exists(), "{id}: no checkpoint kept\n{err}");
        assert!(
            !out.join(id).join("prompt.safetensors").exists(),
            "{id} finished\n{err}"
        );
        assert!(step(id) < 1500);
    }

    // -j 1 runs the jobs in its own process: SIGINT stops it between steps (130), later than it
    // resumed.
    let before = step(JOBS[0]);
    let log = dir.join("serial.log");
    let mut serial = sweep("1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("the resumed job checkpoints again", Duration::from_secs(180), || {
        ckpt(JOBS[0]).exists() && tpv_trainer::train::checkpoint::read(&ckpt(JOBS[0])).is_ok_and(|c| c.step > before)
    });
    stop::send(serial.id(), stop::SIGINT).unwrap();
    let status = wait_exit(&mut serial, Duration::from_secs(60));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("resuming job prompt_tuning/a/origin0 from its checkpoint at step"),
        "{err}"
    );
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(step(JOBS[0]) > before);

    // Run again: both resume and finish.
    let again = sweep("2").output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    // The same jobs uninterrupted, in another study directory.
    let whole = dir.join("whole");
    for id in JOBS {
        let run = tpv()
            .args(["sweep", "--job", id])
            .arg(&config)
            .args(&sets[..4])
            .arg("--set")
            .arg(format!("study.output=\"{}\"", whole.display()))
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let resumed = result(&out.join(id).join("prompt.safetensors"));
        assert!(
            resumed == result(&whole.join(id).join("prompt.safetensors")),
            "{id}: the interrupted and resumed run differs from the uninterrupted one"
        );
        assert!(!ckpt(id).exists());
    }
}

/// Two sweeps, two `-j` slots or two Slurm tasks never run one job at once: with its lock held
/// (here by this test, through the same function every path takes it with), `--job ID`,
/// `--stage S --index I`, `-j 1` and `-j 2` skip the job and the jobs that need it, say so, do
/// not count it as failed, and leave its directory alone; released, the job runs.
#[test]
fn a_job_locked_by_another_process_is_skipped_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let config = fixture_study(&dir);
    let id = "prompt_tuning/a/origin0";
    let run_dir = dir.join("out").join(id);
    let lock = lock_job(&run_dir).unwrap().expect("the lock is free");
    assert!(lock_job(&run_dir).unwrap().is_none(), "one lock, one holder");
    // What the holder has written so far: a checkpoint another process would resume (and fail
    // to read), a temporary file it would delete as stale.
    let files = [
        (
            run_dir.join("checkpoint.safetensors"),
            b"the holder's checkpoint".to_vec(),
        ),
        (run_dir.join(".tpv-tmp-holder"), b"half of the holder's write".to_vec()),
    ];
    for (p, bytes) in &files {
        std::fs::write(p, bytes).unwrap();
    }
    let message = format!(
        "job {id} is running in another process (held by process {}, lock {}); skipped",
        std::process::id(),
        run_dir.join(".lock").display()
    );
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    for args in [&["--job", id][..], &["--stage", "1", "--index", "0"][..]] {
        let o = tpv().arg("sweep").arg(&config).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&message), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: no run file to name");
    }
    let jobs: Value = serde_json::from_slice(
        &tpv()
            .args(["sweep", "--list", "--json"])
            .arg(&config)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let jobs = jobs["jobs"].as_array().unwrap();
    // The job and every job that needs it, transitively.
    let mut blocked = vec![id.to_owned()];
    for j in jobs {
        if j["deps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| blocked.iter().any(|b| b == d))
        {
            blocked.push(j["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(blocked.len() > 3, "{blocked:?}");
    for j in ["1", "2"] {
        let o = tpv().args(["--json", "sweep", "-j", j]).arg(&config).output().unwrap();
        assert!(o.status.success(), "-j {j}: {}", stderr(&o));
        let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["failed"], Value::Array(vec![]), "-j {j}: {}", stderr(&o));
        let mut busy: Vec<String> = serde_json::from_value(summary["busy"].clone()).unwrap();
        busy.sort();
        let mut want = blocked.clone();
        want.sort();
        assert_eq!(busy, want, "-j {j}: {}", stderr(&o));
        assert_eq!(
            summary["skipped"].as_u64().unwrap() as usize + busy.len() + summary["ran"].as_u64().unwrap() as usize,
            jobs.len()
        );
        if j == "1" {
            assert!(stderr(&o).contains(&message), "{}", stderr(&o));
        } else {
            assert!(summary["ran"] == 0, "-j 2 found the others finished: {summary}");
        }
    }
    for (p, bytes) in &files {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} was touched", p.display());
    }
    assert!(!run_dir.join("prompt.safetensors").exists());

    // Released (the holder ended, leaving a checkpoint of its own run), the job runs again.
    drop(lock);
    for (p, _) in &files {
        std::fs::remove_file(p).unwrap();
    }
    let o = tpv()
        .args(["--json", "sweep", "-j", "2"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["ran"].as_u64().unwrap() as usize, blocked.len(), "{summary}");
    assert_eq!(summary["busy"], Value::Array(vec![]));
    assert!(run_dir.join("prompt.safetensors").exists());
}
