//! Publishing files to a hub repo through the hub's HTTP commit protocol, as huggingface_hub's
//! `create_commit` does it (no git):
//!
//! 1. `POST /api/repos/create` (`{name, organization, type, private[, sdk]}`; 409: it exists);
//! 2. the repo's listing (`/api/{type}s/{repo}/revision/main?blobs=true`): a file whose content
//!    the remote already has (its LFS sha256, or its git blob id) is not sent again;
//! 3. `POST /api/{type}s/{repo}/preupload/main` (each file's path, size, sha256 and first 512
//!    bytes): which files go through LFS (`uploadMode`);
//! 4. for those, the LFS batch API (`POST {prefix}{repo}.git/info/lfs/objects/batch`): an object
//!    with no `upload` action is already stored; otherwise `PUT` its bytes where the answer says
//!    (with only the headers it gives: a storage URL never sees the token), then `verify`;
//! 5. one commit, `POST /api/{type}s/{repo}/commit/main` (NDJSON: a header with the message, each
//!    regular file base64-encoded, each LFS file by its sha256).
//!
//! Every request is retried on 429, 5xx and cut connections, with backoff (0.2 s doubling, or the
//! server's Retry-After); the token is `HF_TOKEN` or `--token`, the endpoint `HF_ENDPOINT`.

use std::io::Read;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{ATTEMPTS, Hub, backoff, check_repo_id, progress, retry_after, retryable, status_error};

/// Where a repo lives on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepoType {
    Model,
    Dataset,
    Space,
}

impl RepoType {
    /// The API's plural (`/api/models/…`).
    fn api(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
            Self::Space => "spaces",
        }
    }

    /// The prefix of the repo's own URLs (`/datasets/ORG/NAME/…`; none for models).
    fn url_prefix(self) -> &'static str {
        match self {
            Self::Model => "",
            Self::Dataset => "datasets/",
            Self::Space => "spaces/",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "model" => Ok(Self::Model),
            "dataset" => Ok(Self::Dataset),
            "space" => Ok(Self::Space),
            _ => bail!("--repo-type {s:?}: model, dataset or space"),
        }
    }
}

/// A file to publish, its path in the repo and its bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub repo_id: String,
    pub repo_type: RepoType,
    /// The commit's summary.
    pub message: String,
    pub token: Option<String>,
    /// List what would go (and what the remote already has) without changing anything.
    pub dry_run: bool,
    pub private: bool,
    /// A Space's SDK (`static`) when the push creates one.
    pub space_sdk: Option<String>,
}

/// What a push did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub repo: String,
    pub url: String,
    pub dry_run: bool,
    /// Files sent in the commit (regular ones in it, LFS ones by reference).
    pub sent: Vec<String>,
    /// Of `sent`, those whose bytes went through LFS (uploaded, or already stored).
    pub lfs: Vec<String>,
    /// Files the remote already has with the same content.
    pub unchanged: Vec<String>,
    pub bytes_sent: u64,
    pub commit: Option<String>,
}

/// A file's identities: sha256 (LFS) and git's blob id (sha1 of `blob LEN\0` + bytes).
fn ids(bytes: &[u8]) -> (String, String) {
    let sha256 = format!("{:x}", Sha256::digest(bytes));
    let mut git = Sha1::new();
    git.update(format!("blob {}\0", bytes.len()).as_bytes());
    git.update(bytes);
    (sha256, format!("{:x}", git.finalize()))
}

/// The answers tpv reads from the hub's API are JSON objects of a few KB.
const ANSWER_BYTES: u64 = 16 << 20;

impl Hub {
    /// A request with a body (`POST`/`PUT`), retried like a download; the answer's status and
    /// body (bounded). `auth`: send the token (the hub's API), or only `headers` (a storage URL).
    fn send(
        &self,
        method: &str,
        url: &str,
        (content_type, body): (&str, &[u8]),
        headers: &[(String, String)],
        auth: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = match method {
                "PUT" => self.agent.put(url),
                _ => self.agent.post(url),
            };
            req = req.header("Content-Type", content_type);
            if let Some(token) = auth {
                req = req.header("Authorization", &format!("Bearer {token}"));
            }
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let result = req.send(body);
            let mut resp = match result {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::info!("{method} {url}: {e}; retrying");
                    std::thread::sleep(backoff(attempt, None));
                    continue;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("{method} {url}"))),
            };
            let status = resp.status().as_u16();
            if retryable(status) && attempt < ATTEMPTS {
                std::thread::sleep(backoff(attempt, retry_after(&resp)));
                continue;
            }
            let mut answer = Vec::new();
            resp.body_mut()
                .as_reader()
                .take(ANSWER_BYTES)
                .read_to_end(&mut answer)
                .with_context(|| format!("{method} {url}: cannot read the answer"))?;
            return Ok((status, answer));
        }
    }

    /// [`Self::send`] of JSON to the hub's API, expecting 200 (or one of `also`) and JSON back.
    fn api_json(&self, url: &str, body: &Value, token: &str, also: &[u16]) -> Result<(u16, Value)> {
        let bytes = serde_json::to_vec(body)?;
        let (status, answer) = self.send("POST", url, ("application/json", &bytes), &[], Some(token))?;
        if status != 200 && !also.contains(&status) {
            let text = String::from_utf8_lossy(&answer);
            return Err(status_error(status, url, "the repo").context(text.chars().take(300).collect::<String>()));
        }
        let value = if answer.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer).unwrap_or(Value::Null)
        };
        Ok((status, value))
    }
}

/// Publishes `files` to the repo of `opts` in one commit (see the module's protocol); files the
/// remote already has are skipped, and nothing is committed when nothing changed.
pub fn push(files: &[Upload], opts: &PushOptions) -> Result<PushReport> {
    check_repo_id(&opts.repo_id)?;
    let Some((org, name)) = opts.repo_id.split_once('/') else {
        bail!("{:?}: a repo to push to is ORG/NAME", opts.repo_id);
    };
    for f in files {
        crate::io::check_relative_path(&f.path, "a file to push")?;
    }
    let mut hub = Hub::new();
    // --token reads (the listing of a private repo) as it writes.
    if opts.token.is_some() {
        hub.token.clone_from(&opts.token);
    }
    let (api, prefix) = (opts.repo_type.api(), opts.repo_type.url_prefix());
    let mut report = PushReport {
        repo: opts.repo_id.clone(),
        url: format!("{}/{prefix}{}", hub.base, opts.repo_id),
        dry_run: opts.dry_run,
        sent: Vec::new(),
        lfs: Vec::new(),
        unchanged: Vec::new(),
        bytes_sent: 0,
        commit: None,
    };
    let token = match (&opts.token, opts.dry_run) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => bail!(
            "pushing to {} needs a token with write access: set HF_TOKEN or pass --token",
            report.url
        ),
    };
    if let Some(token) = token.as_deref().filter(|_| !opts.dry_run) {
        let mut body =
            json!({ "name": name, "organization": org, "type": api.trim_end_matches('s'), "private": opts.private });
        if let Some(sdk) = &opts.space_sdk {
            body["sdk"] = json!(sdk);
        }
        hub.api_json(&format!("{}/api/repos/create", hub.base), &body, token, &[409])
            .with_context(|| format!("creating {}", report.url))?;
    }
    // What the remote has: a repo that does not exist yet (a dry run) has nothing.
    let remote = match hub.info(api, &opts.repo_id, "main") {
        Ok(info) => info.siblings,
        Err(_) if opts.dry_run => Vec::new(),
        Err(e) => return Err(e.context(format!("listing {}", report.url))),
    };
    let mut changed: Vec<(&Upload, String)> = Vec::new();
    for f in files {
        let (sha256, blob) = ids(&f.bytes);
        let same = remote.iter().any(|s| {
            s.rfilename == f.path
                && (s.lfs.as_ref().is_some_and(|l| l.sha256 == sha256) || s.blob_id.as_deref() == Some(blob.as_str()))
        });
        if same {
            report.unchanged.push(f.path.clone());
        } else {
            changed.push((f, sha256));
        }
    }
    if opts.dry_run || changed.is_empty() {
        report.sent = changed.iter().map(|(f, _)| f.path.clone()).collect();
        report.bytes_sent = if opts.dry_run {
            changed.iter().map(|(f, _)| f.bytes.len() as u64).sum()
        } else {
            0
        };
        return Ok(report);
    }
    let token = token.unwrap_or_default();
    let base = format!("{}/api/{api}/{}", hub.base, opts.repo_id);
    let lfs_paths = preupload(&hub, &base, &changed, &token)?;
    let lfs: Vec<&(&Upload, String)> = changed.iter().filter(|(f, _)| lfs_paths.contains(&f.path)).collect();
    if !lfs.is_empty() {
        report.bytes_sent += upload_lfs(&hub, &format!("{}/{prefix}{}", hub.base, opts.repo_id), &lfs, &token)?;
    }
    commit(&hub, &base, (&changed, &lfs_paths), &opts.message, &token, &mut report)?;
    Ok(report)
}

/// The hub's preupload answer: which of `changed` go through LFS.
fn preupload(hub: &Hub, base: &str, changed: &[(&Upload, String)], token: &str) -> Result<Vec<String>> {
    let files: Vec<Value> = changed
        .iter()
        .map(|(f, sha)| {
            let sample = base64::engine::general_purpose::STANDARD.encode(&f.bytes[..f.bytes.len().min(512)]);
            json!({ "path": f.path, "size": f.bytes.len(), "sample": sample, "sha256": sha })
        })
        .collect();
    let (_, modes) = hub
        .api_json(
            &format!("{base}/preupload/main"),
            &json!({ "files": files }),
            token,
            &[],
        )
        .context("the hub's preupload")?;
    Ok(modes["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["uploadMode"] == "lfs")
                .filter_map(|m| m["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The commit of `changed`: regular files inline (base64), LFS files by their sha256.
fn commit(
    hub: &Hub,
    base: &str,
    (changed, lfs_paths): (&[(&Upload, String)], &[String]),
    message: &str,
    token: &str,
    report: &mut PushReport,
) -> Result<()> {
    let header = json!({ "key": "header", "value": { "summary": message, "description": "" } });
    let mut ndjson = serde_json::to_string(&header)?;
    for (f, sha) in changed {
        let line = if lfs_paths.contains(&f.path) {
            report.lfs.push(f.path.clone());
            json!({ "key": "lfsFile", "value": { "path": f.path, "algo": "sha256", "oid": sha, "size": f.bytes.len() } })
        } else {
            report.bytes_sent += f.bytes.len() as u64;
            let content = base64::engine::general_purpose::STANDARD.encode(&f.bytes);
            json!({ "key": "file", "value": { "path": f.path, "content": content, "encoding": "base64" } })
        };
        ndjson.push('\n');
        ndjson.push_str(&serde_json::to_string(&line)?);
        report.sent.push(f.path.clone());
    }
    let url = format!("{base}/commit/main");
    let (status, answer) = hub.send(
        "POST",
        &url,
        ("application/x-ndjson", ndjson.as_bytes()),
        &[],
        Some(token),
    )?;
    if status != 200 {
        let text = String::from_utf8_lossy(&answer);
        return Err(status_error(status, &url, "the repo").context(text.chars().take(300).collect::<String>()));
    }
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    report.commit = answer["commitOid"].as_str().map(str::to_owned);
    Ok(())
}

/// The LFS batch API for `files` (each with its sha256): uploads what the remote lacks, a
/// progress bar per file; the bytes uploaded.
fn upload_lfs(hub: &Hub, repo_url: &str, files: &[&(&Upload, String)], token: &str) -> Result<u64> {
    let objects: Vec<Value> = files
        .iter()
        .map(|(f, sha)| json!({ "oid": sha, "size": f.bytes.len() }))
        .collect();
    let body = json!({ "operation": "upload", "transfers": ["basic"], "objects": objects, "hash_algo": "sha256" });
    let url = format!("{repo_url}.git/info/lfs/objects/batch");
    let lfs_json = "application/vnd.git-lfs+json";
    let accept = [("Accept".to_owned(), lfs_json.to_owned())];
    let (status, answer) = hub.send(
        "POST",
        &url,
        (lfs_json, &serde_json::to_vec(&body)?),
        &accept,
        Some(token),
    )?;
    if status != 200 {
        return Err(status_error(status, &url, "the repo's LFS storage"));
    }
    let answer: Value = serde_json::from_slice(&answer).with_context(|| format!("{url}: unexpected answer"))?;
    let mut sent = 0;
    for object in answer["objects"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some(err) = object.get("error") {
            bail!("{url}: the hub refused {}: {err}", object["oid"]);
        }
        let Some(upload) = object["actions"].get("upload") else {
            continue; // already stored
        };
        let oid = object["oid"].as_str().unwrap_or_default();
        let Some((f, _)) = files.iter().find(|(_, sha)| sha == oid) else {
            bail!("{url}: an answer for an object tpv did not ask about ({oid})");
        };
        let href = upload["href"].as_str().context("an LFS upload action without href")?;
        let headers = header_map(&upload["header"]);
        let bar = progress(&f.path, Some(f.bytes.len() as u64));
        let (status, _) = hub.send("PUT", href, ("application/octet-stream", &f.bytes), &headers, None)?;
        bar.inc(f.bytes.len() as u64);
        bar.finish_and_clear();
        if !(200..300).contains(&status) {
            return Err(status_error(status, href, &f.path));
        }
        sent += f.bytes.len() as u64;
        if let Some(verify) = object["actions"].get("verify") {
            let href = verify["href"].as_str().context("an LFS verify action without href")?;
            let body = serde_json::to_vec(&json!({ "oid": oid, "size": f.bytes.len() }))?;
            let (status, _) = hub.send("POST", href, (lfs_json, &body), &header_map(&verify["header"]), None)?;
            if !(200..300).contains(&status) {
                return Err(status_error(status, href, &f.path));
            }
        }
    }
    Ok(sent)
}

/// An LFS action's `header` object as pairs.
fn header_map(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
