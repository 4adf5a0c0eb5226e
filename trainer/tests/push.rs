//! `tpv push` (issue 35) against a local server that speaks the hub's upload protocol as
//! huggingface_hub uses it: repo creation, the listing with blob ids and LFS sha256s, preupload
//! (`.safetensors` through LFS, as the hub's .gitattributes send them), the LFS batch API with
//! upload and verify actions on a storage URL that must not see the token, and the NDJSON commit.
//! It fails the first preupload with a 503 (the client retries) and keeps what was committed, so
//! a second push finds everything unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods, reason = "native test: files and fixtures")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use base64::Engine as _;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const TOKEN: &str = "hf_test_write";
const REPO: &str = "tpv-tests/tiny-study";

/// What the test hub holds and saw.
#[derive(Default)]
struct Remote {
    /// `models` or `spaces`: the kind of repo this hub holds.
    kind: &'static str,
    /// The create request's body.
    create: Value,
    created: bool,
    files: BTreeMap<String, Vec<u8>>,
    lfs: BTreeMap<String, Vec<u8>>,
    commits: usize,
    /// `METHOD PATH` of every request, `+token` when it carried the bearer token.
    log: Vec<String>,
    preuploads: usize,
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn git_blob(b: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    format!("{:x}", h.finalize())
}

fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors")
}

fn reply(stream: &mut std::net::TcpStream, status: &str, body: &Value) {
    // A file (resolve): its bytes; any other answer: JSON.
    let body = match body {
        Value::String(b64) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
        other => other.to_string().into_bytes(),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
}

/// Answers one request of the upload protocol.
fn handle(remote: &mut Remote, addr: &str, method: &str, path: &str, auth: bool, body: &[u8]) -> (&'static str, Value) {
    let api = format!("/api/{}/{REPO}", remote.kind);
    let prefix = if remote.kind == "spaces" { "spaces/" } else { "" };
    let needs_token = path.starts_with("/api/repos") || path.contains("/preupload/") || path.contains("/commit/");
    if needs_token && !auth {
        return ("401 Unauthorized", json!({ "error": "no token" }));
    }
    match (method, path) {
        ("POST", "/api/repos/create") => {
            let req: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(
                (req["organization"].as_str(), req["name"].as_str()),
                (Some("tpv-tests"), Some("tiny-study"))
            );
            remote.create = req.clone();
            if remote.created {
                return (
                    "409 Conflict",
                    json!({ "error": "You already created this model repo" }),
                );
            }
            remote.created = true;
            ("200 OK", json!({ "url": format!("{addr}/{REPO}") }))
        }
        ("GET", p) if p == format!("{api}/revision/main") => {
            if !remote.created {
                return ("404 Not Found", json!({ "error": "Repository not found" }));
            }
            let siblings: Vec<Value> = remote
                .files
                .iter()
                .map(|(name, b)| {
                    let mut s = json!({ "rfilename": name, "size": b.len(), "blobId": git_blob(b) });
                    if is_lfs(name) {
                        s["lfs"] = json!({ "sha256": sha256(b), "size": b.len() });
                    }
                    s
                })
                .collect();
            (
                "200 OK",
                json!({ "sha": format!("{:040x}", remote.commits + 1), "siblings": siblings }),
            )
        }
        ("POST", p) if p == format!("{api}/preupload/main") => {
            remote.preuploads += 1;
            if remote.preuploads == 1 {
                return ("503 Service Unavailable", json!({ "error": "try again" }));
            }
            let req: Value = serde_json::from_slice(body).unwrap();
            let files: Vec<Value> = req["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap();
                    assert!(f["sample"].is_string() && f["size"].is_u64());
                    json!({ "path": path, "uploadMode": if is_lfs(path) { "lfs" } else { "regular" }, "shouldIgnore": false })
                })
                .collect();
            ("200 OK", json!({ "files": files }))
        }
        ("POST", p) if p == format!("/{prefix}{REPO}.git/info/lfs/objects/batch") => lfs_batch(remote, addr, body),
        ("PUT", p) if p.starts_with("/storage/") => {
            let oid = &p["/storage/".len()..];
            assert_eq!(sha256(body), oid, "the stored bytes are the object's");
            remote.lfs.insert(oid.to_owned(), body.to_vec());
            ("200 OK", json!({}))
        }
        ("POST", p) if p.starts_with("/verify/") => {
            let req: Value = serde_json::from_slice(body).unwrap();
            let known = remote.lfs.contains_key(req["oid"].as_str().unwrap());
            if known {
                ("200 OK", json!({}))
            } else {
                ("404 Not Found", json!({}))
            }
        }
        ("POST", p) if p == format!("{api}/commit/main") => apply_commit(remote, addr, body),
        ("GET", p) if p.starts_with(&format!("/{prefix}{REPO}/resolve/")) => {
            // `resolve/COMMIT/FILE`: the repo's file as committed (bytes, not JSON).
            let rest = &p[format!("/{prefix}{REPO}/resolve/").len()..];
            let file = rest.split_once('/').map_or("", |(_, f)| f);
            match remote.files.get(file) {
                Some(b) => (
                    "200 OK",
                    Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
                ),
                None => ("404 Not Found", json!({ "error": "no such file" })),
            }
        }
        _ => ("404 Not Found", json!({ "error": format!("{method} {path}") })),
    }
}

/// The LFS batch API: an upload and a verify action for each object the store lacks.
fn lfs_batch(remote: &Remote, addr: &str, body: &[u8]) -> (&'static str, Value) {
    let req: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(req["operation"], "upload");
    let objects: Vec<Value> = req["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let oid = o["oid"].as_str().unwrap();
            if remote.lfs.contains_key(oid) {
                json!({ "oid": oid, "size": o["size"] })
            } else {
                json!({ "oid": oid, "size": o["size"], "actions": {
                    "upload": { "href": format!("{addr}/storage/{oid}"), "header": { "X-Storage-Signature": "signed" } },
                    "verify": { "href": format!("{addr}/verify/{oid}"), "header": { "Authorization": "Basic lfs-verify" } },
                }})
            }
        })
        .collect();
    ("200 OK", json!({ "transfer": "basic", "objects": objects }))
}

/// An NDJSON commit: its files (regular ones inline, LFS ones from the store) into the repo.
fn apply_commit(remote: &mut Remote, addr: &str, body: &[u8]) -> (&'static str, Value) {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap());
    let header = lines.next().unwrap();
    assert_eq!(header["key"], "header");
    assert!(header["value"]["summary"].as_str().unwrap().starts_with("tpv "));
    for line in lines {
        let v = &line["value"];
        let path = v["path"].as_str().unwrap().to_owned();
        let bytes = match line["key"].as_str().unwrap() {
            "file" => base64::engine::general_purpose::STANDARD
                .decode(v["content"].as_str().unwrap())
                .unwrap(),
            "lfsFile" => match remote.lfs.get(v["oid"].as_str().unwrap()) {
                Some(b) => b.clone(),
                None => {
                    return (
                        "400 Bad Request",
                        json!({ "error": format!("LFS object of {path} missing") }),
                    );
                }
            },
            other => panic!("a commit line {other}"),
        };
        remote.files.insert(path, bytes);
    }
    remote.commits += 1;
    (
        "200 OK",
        json!({ "commitOid": format!("{:040x}", remote.commits + 1), "commitUrl": format!("{addr}/{REPO}/commit/x") }),
    )
}

fn serve(kind: &'static str) -> (String, Arc<Mutex<Remote>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let remote = Arc::new(Mutex::new(Remote {
        kind,
        ..Remote::default()
    }));
    let (state, base) = (Arc::clone(&remote), addr.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let (mut auth, mut len, mut storage_signed) = (false, 0usize, false);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let lower = line.to_lowercase();
                auth |= lower.starts_with("authorization:") && line.contains(TOKEN);
                storage_signed |= lower.starts_with("x-storage-signature: signed");
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            let mut remote = state.lock().unwrap();
            remote
                .log
                .push(format!("{method} {path}{}", if auth { " +token" } else { "" }));
            if path.starts_with("/storage/") {
                assert!(storage_signed, "the storage URL got the action's own headers");
            }
            let (status, answer) = handle(&mut remote, &base, method, path, auth, &body);
            drop(remote);
            reply(&mut stream, status, &answer);
        }
    });
    (addr, remote)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tpv(endpoint: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("tpv").unwrap();
    cmd.args(args).env("HF_ENDPOINT", endpoint).env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

/// The fixture study swept and aggregated into `dir`.
fn study(dir: &Path) -> PathBuf {
    let out = dir.join("tiny");
    let config = root().join("tests/fixtures/study/study.toml");
    let sweep = tpv(
        "http://127.0.0.1:9",
        None,
        &[
            "sweep",
            config.to_str().unwrap(),
            "--set",
            &format!("study.output=\"{}\"", out.display()),
            "--aggregate",
        ],
    );
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    out
}

#[test]
fn a_study_is_published_in_one_commit_and_a_second_push_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = study(tmp.path());
    let (endpoint, remote) = serve("models");
    let study = dir.to_str().unwrap();

    // A dry run lists what would go and changes nothing (the repo does not exist yet).
    let dry = tpv(&endpoint, None, &["--json", "push", study, REPO, "--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let report: Value = serde_json::from_slice(&dry.stdout).unwrap();
    let would: Vec<&str> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "README.md",
        "adapters/a/origin0/adapter_config.json",
        "adapters/b/origin1/adapter_model.safetensors",
        "runs/prompt_tuning/a/origin0.safetensors",
        "origins/origin1.safetensors",
        "tables.md",
        "study.json",
    ] {
        assert!(would.contains(&want), "{want} not in {would:?}");
    }
    assert!(would.iter().any(|f| f.starts_with("figures/")) && would.iter().any(|f| f.starts_with("runs/addition/")));
    assert!(
        remote.lock().unwrap().log.iter().all(|l| l.starts_with("GET ")),
        "a dry run only looks"
    );

    // Without a token: a clear error, nothing sent.
    let no_token = tpv(&endpoint, None, &["push", study, REPO]);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("HF_TOKEN"));

    // The push: created, preupload retried after a 503, safetensors through LFS, one commit.
    let pushed = tpv(&endpoint, Some(TOKEN), &["--json", "push", study, REPO]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let report: Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let r = remote.lock().unwrap();
    assert_eq!((r.commits, r.preuploads), (1, 2), "{:#?}", r.log);
    assert!(
        r.log
            .iter()
            .filter(|l| l.starts_with("PUT /storage/"))
            .all(|l| !l.ends_with("+token")),
        "the token went to storage: {:#?}",
        r.log
    );
    assert_eq!(report["sent"].as_array().unwrap().len(), would.len());
    assert!(
        report["lfs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_str().unwrap().ends_with(".safetensors"))
    );
    assert_repo_holds_the_study(&r, &dir, &endpoint, tmp.path());
    drop(r);

    // Again: the remote has every file (by LFS sha256 or git blob id): no upload, no commit.
    // (With --token rather than HF_TOKEN: the listing carries it too, as a private repo needs.)
    let again = tpv(&endpoint, None, &["--json", "push", study, REPO, "--token", TOKEN]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["sent"].as_array().unwrap().len(), 0, "{report:#}");
    assert_eq!(report["unchanged"].as_array().unwrap().len(), would.len());
    let r = remote.lock().unwrap();
    assert_eq!(r.commits, 1);
    assert!(
        r.log.last().unwrap().starts_with("GET ") && r.log.last().unwrap().ends_with("+token"),
        "{:#?}",
        r.log
    );
    assert_eq!(
        r.log.iter().filter(|l| l.starts_with("PUT ")).count(),
        report_lfs_count(&r)
    );
}

/// The run files as they are, the adapters as `tpv peft export` writes them, the card, the
/// tables, and no path of this machine.
fn assert_repo_holds_the_study(r: &Remote, dir: &Path, endpoint: &str, tmp: &Path) {
    // What the repo holds: the run files as they are, the adapters as `tpv peft export` writes them.
    let run = dir.join("prompt_tuning/a/origin0/prompt.safetensors");
    assert_eq!(
        r.files["runs/prompt_tuning/a/origin0.safetensors"],
        std::fs::read(&run).unwrap()
    );
    let export = tmp.join("export");
    let out = tpv(
        endpoint,
        None,
        &["peft", "export", run.to_str().unwrap(), "-o", export.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(
            r.files[&format!("adapters/a/origin0/{f}")],
            std::fs::read(export.join(f)).unwrap(),
            "{f}"
        );
    }
    let config: Value = serde_json::from_slice(&r.files["adapters/a/origin0/adapter_config.json"]).unwrap();
    assert_eq!(config["peft_type"], "PROMPT_TUNING");
    let card = String::from_utf8(r.files["README.md"].clone()).unwrap();
    assert!(
        card.starts_with("---\n") && card.contains("library_name: peft") && card.contains("- task-prompt-vectors"),
        "{card}"
    );
    assert!(
        card.contains("subfolder=\"adapters/a/origin0\"") && card.contains("## Prompt tuning"),
        "{card}"
    );
    assert_eq!(r.files["tables.md"], std::fs::read(dir.join("tables.md")).unwrap());
    // Training curves over origins: mean ± std per step of the origins' own curves, and a figure.
    let tables: Value = serde_json::from_slice(&r.files["tables.json"]).unwrap();
    let band = tables["curves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["task"] == "a" && c["curve"] == "train_loss")
        .unwrap();
    let last = |o: usize| {
        let run = tpv_shared::runfile::read_run(
            &std::fs::read(dir.join(format!("prompt_tuning/a/origin{o}/prompt.safetensors"))).unwrap(),
        )
        .unwrap();
        f64::from(*run.curves["train_loss"].values.last().unwrap())
    };
    let (x, y) = (last(0), last(1));
    let means = band["mean"].as_array().unwrap();
    assert!(
        (means.last().unwrap().as_f64().unwrap() - (x + y) / 2.0).abs() < 1e-6,
        "{band}"
    );
    assert!((band["std"].as_array().unwrap().last().unwrap().as_f64().unwrap() - (x - y).abs() / 2.0).abs() < 1e-6);
    assert_eq!(band["n"], 2);
    assert!(String::from_utf8_lossy(&r.files["figures/curves_a.svg"]).contains("mean ± std over origins"));
    // The paper-ready tables: booktabs, a row per task, the cross-origin p-values marked.
    let tex = String::from_utf8(r.files["tables.tex"].clone()).unwrap();
    assert!(
        tex.contains("\\toprule") && tex.contains("\\bottomrule") && tex.contains("\\caption{Prompt tuning (test).}"),
        "{tex}"
    );
    assert!(
        tex.contains("\na & exact\\_match & ") && tex.contains("\\caption{Cross-origin"),
        "{tex}"
    );
    // No path of this machine in what is public: the card and study.json name the model by its folder.
    assert!(card.contains("on `llama_tied`") && !card.contains("/work/"), "{card}");
    let published: Value = serde_json::from_slice(&r.files["study.json"]).unwrap();
    assert_eq!(
        (published["model"].as_str(), published["config"].as_str()),
        (Some("llama_tied"), Some("study.toml"))
    );
}

/// How many LFS objects the remote stores (each PUT once).
fn report_lfs_count(r: &Remote) -> usize {
    r.lfs.len()
}

/// `tpv report --push`: the site, every file of it, as a static Space (`sdk: static` in its
/// README and in the creation request), so one link opens the report.
#[test]
fn a_report_is_published_as_a_static_space() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = study(tmp.path());
    let (endpoint, remote) = serve("spaces");
    let site = tmp.path().join("tiny-site");
    let out = tpv(
        &endpoint,
        Some(TOKEN),
        &[
            "--json",
            "report",
            dir.to_str().unwrap(),
            "-o",
            site.to_str().unwrap(),
            "--push",
            REPO,
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["pushed"]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/spaces/{REPO}"))
    );
    let r = remote.lock().unwrap();
    assert_eq!(
        (r.create["type"].as_str(), r.create["sdk"].as_str()),
        (Some("space"), Some("static"))
    );
    let readme = String::from_utf8(r.files["README.md"].clone()).unwrap();
    assert!(
        readme.contains("sdk: static") && readme.contains("app_file: index.html"),
        "{readme}"
    );
    for f in ["index.html", "manifest.json", "tables.md"] {
        assert_eq!(r.files[f], std::fs::read(site.join(f)).unwrap(), "{f}");
    }
    let runs = r.files.keys().filter(|k| k.starts_with("runs/")).count();
    assert_eq!(
        runs,
        report["runs"].as_u64().unwrap() as usize,
        "every run file of the site"
    );
}

/// `origin0.safetensors` in `dir` exported to peft and imported again as an origin of another
/// model (`foreign.safetensors`).
fn foreign_origin(dir: &Path, endpoint: &str) {
    let adapter = dir.join("adapter");
    let origin0 = dir.join("origin0.safetensors");
    let out = tpv(
        endpoint,
        None,
        &[
            "peft",
            "export",
            origin0.to_str().unwrap(),
            "-o",
            adapter.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let foreign = dir.join("foreign.safetensors");
    let out = tpv(
        endpoint,
        None,
        &[
            "peft",
            "import",
            adapter.to_str().unwrap(),
            "--as",
            "origin",
            "--model",
            "other-org/other-model",
            "-o",
            foreign.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 35's reuse: `tpv combine --vector ORG/NAME:TASK[@originN]` reads a published library's
/// task prompts through the download path (into the hub cache) and combines them as the study's
/// own run files combine; a library is used only with its base model and its own origins.
#[test]
fn a_published_library_is_combined_only_with_its_model_and_origins() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = study(tmp.path());
    let (endpoint, remote) = serve("models");
    let pushed = tpv(&endpoint, Some(TOKEN), &["push", dir.to_str().unwrap(), REPO]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    for o in ["origin0", "origin1"] {
        let bytes = remote.lock().unwrap().files[&format!("origins/{o}.safetensors")].clone();
        std::fs::write(tmp.path().join(format!("{o}.safetensors")), bytes).unwrap();
    }
    let cache = tmp.path().join("hub");
    let combine = |origin: &str, vectors: &[String], out: &str| {
        let mut args = vec![
            "--json".to_owned(),
            "combine".into(),
            "--origin".into(),
            tmp.path().join(origin).display().to_string(),
        ];
        for v in vectors {
            args.extend(["--vector".to_owned(), v.clone()]);
        }
        args.extend(["-o".to_owned(), tmp.path().join(out).display().to_string()]);
        Command::cargo_bin("tpv")
            .unwrap()
            .args(&args)
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let lib = combine(
        "origin0.safetensors",
        &[format!("{REPO}:a"), format!("{REPO}:b")],
        "lib.safetensors",
    );
    assert!(lib.status.success(), "{}", String::from_utf8_lossy(&lib.stderr));
    let run = |t: &str| {
        dir.join(format!("prompt_tuning/{t}/origin0/prompt.safetensors"))
            .display()
            .to_string()
    };
    let local = combine("origin0.safetensors", &[run("a"), run("b")], "local.safetensors");
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let (lib, local): (Value, Value) = (
        serde_json::from_slice(&lib.stdout).unwrap(),
        serde_json::from_slice(&local.stdout).unwrap(),
    );
    assert_eq!(lib["norms"], local["norms"], "the library's prompts are the study's");
    assert_eq!(lib["mixed_origins"], false);
    assert!(
        cache.join("models--tpv-tests--tiny-study").is_dir(),
        "downloaded into the hub cache"
    );
    // Another origin than the one the prompt was tuned from: refused, naming it.
    let other = combine("origin1.safetensors", &[format!("{REPO}:a@origin0")], "x.safetensors");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("another origin") && err.contains("origins/origin0.safetensors"),
        "{err}"
    );
    // A task the library does not have: the error lists what it has.
    let missing = combine("origin0.safetensors", &[format!("{REPO}:zzz")], "y.safetensors");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("has no runs/prompt_tuning/zzz/origin0.safetensors"),
        "{err}"
    );
    // Another base model: an origin imported under another model's name is refused.
    foreign_origin(tmp.path(), &endpoint);
    let wrong = combine("foreign.safetensors", &[format!("{REPO}:a@origin0")], "z.safetensors");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("was tuned on llama_tied") && err.contains("other-org/other-model"),
        "{err}"
    );
}

/// `tpv recommend --library ORG/NAME`: a published library ranks its vectors for a new task as
/// the study directory it came from does (its runs downloaded into the hub cache); without
/// --model it names the model the runs were tuned on rather than guessing a path.
#[test]
fn a_published_library_recommends_as_its_study_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = study(tmp.path());
    let (endpoint, _remote) = serve("models");
    let pushed = tpv(&endpoint, Some(TOKEN), &["push", dir.to_str().unwrap(), REPO]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let model = root().join("tests/fixtures/models/llama_tied");
    let data = dir.join("examples/c.json");
    let recommend = |library: &str, model: Option<&Path>| {
        let mut cmd = Command::cargo_bin("tpv").unwrap();
        cmd.args([
            "--json",
            "recommend",
            "--library",
            library,
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--tune-steps", "2", "--max-examples", "4"])
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .env_remove("HF_HUB_OFFLINE");
        if let Some(m) = model {
            cmd.arg("--model").arg(m);
        }
        cmd.output().unwrap()
    };
    let local = recommend(dir.to_str().unwrap(), Some(&model));
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let hub = recommend(REPO, Some(&model));
    assert!(hub.status.success(), "{}", String::from_utf8_lossy(&hub.stderr));
    let (local, hub): (Value, Value) = (
        serde_json::from_slice(&local.stdout).unwrap(),
        serde_json::from_slice(&hub.stdout).unwrap(),
    );
    assert_eq!(
        local["candidates"], hub["candidates"],
        "the same ranking from the published runs"
    );
    assert_eq!(hub["origins"], json!([0, 1]));
    let names: Vec<&str> = hub["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"a") && names.contains(&"a+b"), "{names:?}");
    let no_model = recommend(REPO, None);
    let err = String::from_utf8_lossy(&no_model.stderr);
    assert!(
        !no_model.status.success() && err.contains("pass --model") && err.contains("llama_tied"),
        "{err}"
    );
}
