//! Registry tasks' datasets from the hub (issue 17), against a local HTTP server that speaks the
//! hub's protocol and misbehaves on purpose: a dataset in its own parquet shards (one cut
//! mid-file, one answered 429 first), one only in its parquet conversion, a gated one, a missing
//! one, one whose file always arrives truncated, and offline mode. The parquet files are the
//! committed fixtures of tests/fixtures/hub (written by tests/reference/parquet_fixtures.py).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "native test: reads fixtures and writes configs"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use sha2::{Digest, Sha256};

const GLUE: &str = "1111111111111111111111111111111111111111";
const SNLI_CONVERTED: &str = "2222222222222222222222222222222222222222";
const SNLI_MAIN: &str = "3333333333333333333333333333333333333333";

fn fixture(repo: &str, file: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hub");
    let snap = root
        .join(format!("datasets--{}", repo.replace('/', "--")))
        .join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::read(snap.join(file)).unwrap()
}

/// How the server answers a file.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The first answer announces the whole file and sends half, then closes.
    CutOnce,
    /// The first answer is 429 (Retry-After: 0).
    RateLimitedOnce,
    /// Every answer sends half the file (the listing says the whole size).
    AlwaysTruncated,
}

struct File {
    bytes: Vec<u8>,
    fault: Fault,
}

/// repo → revision → (commit, files).
type Repos = BTreeMap<&'static str, BTreeMap<&'static str, (&'static str, BTreeMap<String, File>)>>;

fn repos() -> Repos {
    let glue_train = fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet");
    let mut glue = BTreeMap::new();
    for (name, bytes, fault) in [
        ("sst2/train-00000-of-00002.parquet", glue_train.clone(), Fault::CutOnce),
        ("sst2/train-00001-of-00002.parquet", glue_train, Fault::RateLimitedOnce),
        (
            "sst2/validation-00000-of-00001.parquet",
            fixture("nyu-mll/glue", "sst2/validation-00000-of-00001.parquet"),
            Fault::None,
        ),
        ("qqp/train-00000-of-00001.parquet", b"not needed".to_vec(), Fault::None),
        ("README.md", b"# glue".to_vec(), Fault::None),
    ] {
        glue.insert(name.to_owned(), File { bytes, fault });
    }
    let mut snli_main = BTreeMap::new();
    snli_main.insert(
        "snli.py".to_owned(),
        File {
            bytes: b"# a loading script".to_vec(),
            fault: Fault::None,
        },
    );
    let mut snli_conv = BTreeMap::new();
    for (name, src) in [
        (
            "plain_text/train/0000.parquet",
            "plain_text/train-00000-of-00001.parquet",
        ),
        (
            "plain_text/validation/0000.parquet",
            "plain_text/validation-00000-of-00001.parquet",
        ),
    ] {
        snli_conv.insert(
            name.to_owned(),
            File {
                bytes: fixture("stanfordnlp/snli", src),
                fault: Fault::None,
            },
        );
    }
    let mut broken = BTreeMap::new();
    broken.insert(
        "data/test-00000-of-00001.parquet".to_owned(),
        File {
            bytes: fixture("nyu-mll/glue", "sst2/test-00000-of-00001.parquet"),
            fault: Fault::None,
        },
    );
    broken.insert(
        "data/train-00000-of-00001.parquet".to_owned(),
        File {
            bytes: fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet"),
            fault: Fault::AlwaysTruncated,
        },
    );
    let mut r: Repos = BTreeMap::new();
    r.entry("nyu-mll/glue").or_default().insert("main", (GLUE, glue));
    r.entry("stanfordnlp/snli")
        .or_default()
        .insert("main", (SNLI_MAIN, snli_main));
    r.entry("stanfordnlp/snli")
        .or_default()
        .insert("refs%2Fconvert%2Fparquet", (SNLI_CONVERTED, snli_conv));
    r.entry("fancyzhx/ag_news").or_default().insert("main", (GLUE, broken));
    r
}

fn respond(stream: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8], send: usize) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&body[..send.min(body.len())]);
}

/// Serves `repos()`; logs each request as `PATH RANGE`.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        let repos = repos();
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut range = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let path = target.split('?').next().unwrap_or("").to_owned();
            seen.lock().unwrap().push(format!("{path} {range}"));
            if path.contains("/gated/repo/") {
                respond(&mut stream, "401 Unauthorized", "", b"gated", usize::MAX);
                continue;
            }
            if let Some(rest) = path.strip_prefix("/api/datasets/") {
                let (repo, rev) = rest.split_once("/revision/").unwrap();
                match repos.get(repo).and_then(|r| r.get(rev)) {
                    Some((sha, files)) => {
                        let siblings: Vec<_> = files
                            .iter()
                            .map(|(name, f)| {
                                let sum = format!("{:x}", Sha256::digest(&f.bytes));
                                serde_json::json!({ "rfilename": name, "size": f.bytes.len(),
                                    "lfs": { "sha256": sum, "size": f.bytes.len() } })
                            })
                            .collect();
                        let body = serde_json::json!({ "sha": sha, "siblings": siblings }).to_string();
                        respond(&mut stream, "200 OK", "", body.as_bytes(), usize::MAX);
                    }
                    None => respond(&mut stream, "404 Not Found", "", b"no such repo", usize::MAX),
                }
                continue;
            }
            let file = repos.iter().find_map(|(repo, revs)| {
                revs.values().find_map(|(sha, files)| {
                    let name = path.strip_prefix(&format!("/datasets/{repo}/resolve/{sha}/"))?;
                    files.get(name)
                })
            });
            let Some(file) = file else {
                respond(&mut stream, "404 Not Found", "", b"not found", usize::MAX);
                continue;
            };
            let n = served.entry(path.clone()).or_default();
            *n += 1;
            match file.fault {
                Fault::RateLimitedOnce if *n == 1 => {
                    respond(
                        &mut stream,
                        "429 Too Many Requests",
                        "Retry-After: 0\r\n",
                        b"slow down",
                        usize::MAX,
                    );
                }
                Fault::CutOnce if *n == 1 => {
                    let half = file.bytes.len() / 2;
                    respond(&mut stream, "200 OK", "", &file.bytes, half);
                }
                Fault::AlwaysTruncated => {
                    let half = &file.bytes[..file.bytes.len() / 2];
                    respond(&mut stream, "200 OK", "", half, usize::MAX);
                }
                _ if range > 0 && range < file.bytes.len() => {
                    let h = format!(
                        "Content-Range: bytes {range}-{}/{}\r\n",
                        file.bytes.len() - 1,
                        file.bytes.len()
                    );
                    respond(&mut stream, "206 Partial Content", &h, &file.bytes[range..], usize::MAX);
                }
                _ => respond(&mut stream, "200 OK", "", &file.bytes, usize::MAX),
            }
        }
    });
    (addr, log)
}

fn tpv(cache: &Path, endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("tpv")
        .unwrap()
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap()
}

fn snapshot_file(cache: &Path, repo: &str, sha: &str, file: &str) -> PathBuf {
    cache
        .join(format!("datasets--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(sha)
        .join(file)
}

#[test]
fn registry_datasets_download_into_the_hub_cache_and_train_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, log) = serve();
    let out = tpv(&cache, &endpoint, &["fetch", "sst2", "snli"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // glue's own parquet shards of the sst2 config (train and the held-out validation), whole;
    // not the other config's, not the README.
    let train = fixture("nyu-mll/glue", "sst2/train-00000-of-00001.parquet");
    for shard in ["sst2/train-00000-of-00002.parquet", "sst2/train-00001-of-00002.parquet"] {
        assert_eq!(
            std::fs::read(snapshot_file(&cache, "nyu-mll/glue", GLUE, shard)).unwrap(),
            train,
            "{shard}"
        );
    }
    assert!(snapshot_file(&cache, "nyu-mll/glue", GLUE, "sst2/validation-00000-of-00001.parquet").exists());
    assert!(!snapshot_file(&cache, "nyu-mll/glue", GLUE, "qqp/train-00000-of-00001.parquet").exists());
    assert!(!snapshot_file(&cache, "nyu-mll/glue", GLUE, "README.md").exists());
    let glue_refs = cache.join("datasets--nyu-mll--glue/refs/main");
    assert_eq!(std::fs::read_to_string(glue_refs).unwrap(), GLUE);
    // snli has no parquet of its own: the hub's conversion, under its own ref.
    assert!(
        snapshot_file(
            &cache,
            "stanfordnlp/snli",
            SNLI_CONVERTED,
            "plain_text/train/0000.parquet"
        )
        .exists()
    );
    // The conversion's ref where huggingface_hub keeps it (refs/ + the revision's name).
    let conv_ref = cache.join("datasets--stanfordnlp--snli/refs/refs/convert/parquet");
    assert_eq!(std::fs::read_to_string(conv_ref).unwrap(), SNLI_CONVERTED);

    // The cut shard was resumed where it broke (a Range request from its half), the rate-limited
    // one asked again.
    let requests = log.lock().unwrap().clone();
    let cut =
        "/datasets/nyu-mll/glue/resolve/1111111111111111111111111111111111111111/sst2/train-00000-of-00002.parquet";
    assert!(
        requests.iter().any(|r| r == &format!("{cut} {}", train.len() / 2)),
        "{requests:#?}"
    );
    let limited = "sst2/train-00001-of-00002.parquet 0";
    assert_eq!(
        requests.iter().filter(|r| r.ends_with(limited)).count(),
        2,
        "{requests:#?}"
    );

    // Offline now: the task reads from the cache (two shards: twice the fixture's 30 records).
    let config = dir.path().join("c.toml");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_tied");
    std::fs::write(
        &config,
        format!(
            "# test\n[model]\npath = {:?}\n[prompt]\nvirtual_tokens = 2\ninit = {{ sample_vocab = {{ seed = 7 }} }}\n[data]\ntrain = \"sst2\"\n[optim]\nmax_steps = 1\n[train]\noutput = \"out\"\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::cargo_bin("tpv")
        .unwrap()
        .args(["--json", "data"])
        .arg(&config)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["train"].as_u64().unwrap() + v["validation"].as_u64().unwrap() + v["test"].as_u64().unwrap();
    assert_eq!(n, 60 + 8, "{v}");
}

#[test]
fn dataset_failures_say_which_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, _) = serve();
    let err = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::cargo_bin("tpv").unwrap();
        cmd.args(args)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_ENDPOINT", &endpoint)
            .env_remove("HF_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A file that always arrives short is never used.
    let e = err(&["fetch", "ag_news"], &[]);
    assert!(e.contains("the hub lists") && e.contains("attempts"), "{e}");
    assert!(!snapshot_file(&cache, "fancyzhx/ag_news", GLUE, "data/train-00000-of-00001.parquet").exists());
    // A config the hub does not have (glue is served without qnli; its sst2 files are in the
    // cache now and must not stand in for it), and offline with an empty cache.
    let out = tpv(&cache, &endpoint, &["fetch", "sst2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = err(&["fetch", "qnli"], &[]);
    assert!(e.contains("404") && e.contains("check the name"), "{e}");
    let e = err(&["fetch", "mnli"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("nyu-mll/glue"), "{e}");
    // A gated repo (a model here: the same client) says so and what to do.
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"input\": \"a\", \"target\": \"b\"}\n").unwrap();
    let e = err(
        &["eval", "--model", "gated/repo", "--data", data.to_str().unwrap()],
        &[],
    );
    assert!(e.contains("gated") && e.contains("HF_TOKEN"), "{e}");
}
