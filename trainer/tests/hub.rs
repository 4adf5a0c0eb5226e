//! Downloading a model from the hub into the cache layout, against a local HTTP server that speaks
//! the hub's protocol (repo info with the commit and file list, then `resolve/COMMIT/FILE`) and
//! serves the tiny LLaMA fixture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;

const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

fn fixture() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/models/llama_tied"
    ))
    .to_owned()
}

const FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
];

/// Serves the hub protocol for `tiny/llama`; records each request line and its Authorization.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    serve_listing(FILES)
}

/// [`serve`] with another file list; a listed file the fixture lacks is served as a few bytes.
fn serve_listing(files: &'static [&'static str]) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if line.to_lowercase().starts_with("authorization:") {
                    auth = line.trim().to_owned();
                }
            }
            let target = request.split_whitespace().nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("").to_owned();
            seen.lock().unwrap().push(format!("{path} {auth}"));
            let body: Option<Vec<u8>> = if path == "/api/models/tiny/llama/revision/main" {
                let siblings: Vec<_> = files.iter().map(|f| serde_json::json!({ "rfilename": f })).collect();
                Some(
                    serde_json::json!({ "sha": SHA, "siblings": siblings })
                        .to_string()
                        .into_bytes(),
                )
            } else if let Some(file) = path.strip_prefix(&format!("/tiny/llama/resolve/{SHA}/")) {
                std::fs::read(fixture().join(file))
                    .ok()
                    .or_else(|| Some(b"written by a hostile hub".to_vec()))
            } else {
                None
            };
            let (status, body) = match body {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    (addr, log)
}

fn eval(model: &str, data: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("tpv").unwrap();
    cmd.args([
        "eval",
        "--model",
        model,
        "--no-chat-template",
        "--max-new-tokens",
        "3",
        "--json",
        "--data",
    ])
    .arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("HF_HOME");
    cmd.output().unwrap()
}

#[test]
fn a_missing_model_is_downloaded_into_the_hub_cache_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"input\": \"w5 w17 w33\", \"target\": \"w12\"}\n").unwrap();
    let cache = dir.path().join("hub");
    let cache_str = cache.display().to_string();
    let (endpoint, log) = serve();

    let got = eval(
        "tiny/llama",
        &data,
        &[
            ("HF_HUB_CACHE", &cache_str),
            ("HF_ENDPOINT", &endpoint),
            ("HF_TOKEN", "secret"),
        ],
    );
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let direct = eval(&fixture().display().to_string(), &data, &[]);
    // Everything but the timing.
    let results = |out: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(out).unwrap();
        v.as_object_mut().unwrap().remove("timing");
        v
    };
    assert_eq!(
        results(&got.stdout),
        results(&direct.stdout),
        "the downloaded model computes what the fixture computes"
    );

    let repo = cache.join("models--tiny--llama");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), SHA);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let bytes = std::fs::read(repo.join("snapshots").join(SHA).join(f)).unwrap();
        assert_eq!(bytes, std::fs::read(fixture().join(f)).unwrap(), "{f}");
    }
    assert!(
        !repo.join("snapshots").join(SHA).join("README.md").exists(),
        "only the files tpv reads"
    );
    let requests = log.lock().unwrap().clone();
    assert!(requests.iter().all(|r| r.ends_with("Bearer secret")), "{requests:?}");

    // Issue 15 (11): the token never reaches the logs, even at trace level (the HTTP library's
    // hex dump showed it split across two lines).
    let traced_cache = dir.path().join("hub-traced");
    for env in [("RUST_LOG", "trace"), ("TPV_UNUSED", "")] {
        let mut cmd = Command::cargo_bin("tpv").unwrap();
        cmd.args([
            "-vvv",
            "eval",
            "--model",
            "tiny/llama",
            "--no-chat-template",
            "--json",
            "--data",
        ])
        .arg(&data)
        .env("HF_HUB_CACHE", &traced_cache)
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_TOKEN", "hf_QXZTOKENVALUE")
        .env(env.0, env.1)
        .env_remove("HF_HOME");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        for piece in ["QXZ", "TOKENVALUE", "hf_Q", "Authorization", "authorization"] {
            assert!(!err.contains(piece), "{piece} in the logs:\n{err}");
        }
        std::fs::remove_dir_all(&traced_cache).unwrap();
    }

    // Cached now: no network needed.
    let offline = eval(
        "tiny/llama",
        &data,
        &[("HF_HUB_CACHE", &cache_str), ("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(results(&offline.stdout), results(&direct.stdout));

    // Neither cached nor reachable: both reasons are given.
    let missing = eval(
        "tiny/other",
        &data,
        &[("HF_HUB_CACHE", &cache_str), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("not in the local hub cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// Issue 15 (2): a file name from the hub's listing that leaves the snapshot directory
/// (`model-x/../../…/X.safetensors`) used to be written wherever it pointed, and tpv exited 0.
#[test]
fn hub_file_names_that_leave_the_cache_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"input\": \"w5\", \"target\": \"w12\"}\n").unwrap();
    let cache = dir.path().join("hub");
    let (endpoint, _) = serve_listing(&[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "model-x/../../../../../X.safetensors",
    ]);
    let got = eval(
        "tiny/llama",
        &data,
        &[
            ("HF_HUB_CACHE", &cache.display().to_string()),
            ("HF_ENDPOINT", &endpoint),
        ],
    );
    assert!(!got.status.success());
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains("leaves its directory"), "{err}");
    let written: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.ends_with("X.safetensors"))
        .collect();
    assert!(written.is_empty(), "{written:?}");
    // Repo ids and revisions are checked too, before anything is requested.
    let bad = eval(
        "../../x",
        &data,
        &[
            ("HF_HUB_CACHE", &cache.display().to_string()),
            ("HF_ENDPOINT", &endpoint),
        ],
    );
    assert!(!bad.status.success());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
