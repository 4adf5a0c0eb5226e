//! Downloading models and datasets from the HF hub into the local hub cache, in the layout
//! `huggingface_hub` uses (`models--ORG--NAME/snapshots/COMMIT/FILE`, `datasets--ORG--NAME/…`,
//! `refs/REVISION`: `refs/refs/convert/parquet` for the conversion), so Python tools and tpv
//! share one cache. The endpoint is `$HF_ENDPOINT`
//! (default `https://huggingface.co`), the token `$HF_TOKEN`; `$HF_HUB_OFFLINE=1` forbids the
//! network.
//!
//! Protocol: `GET {endpoint}/api/{models|datasets}/{repo}/revision/{revision}?blobs=true` gives the
//! commit (`sha`) and the files (`siblings`, with their size and an LFS file's sha256); each file
//! comes from `{endpoint}/[datasets/]{repo}/resolve/{commit}/{file}`. Every file is fetched with
//! retries (429, 5xx and cut connections, with backoff from 0.2 s or the server's Retry-After),
//! one process at a time (a lock file), resumed where a cut left it (HTTP
//! Range, from `FILE.incomplete`), and checked against the listed size and sha256 before it takes
//! its name: a truncated or corrupt file is never used.
//!
//! A dataset is read as parquet: the repo's own files of the needed config and splits where it
//! has them (`nyu-mll/glue`: `mnli/train-*.parquet`), otherwise the hub's conversion (revision
//! `refs/convert/parquet`: `CONFIG/SPLIT/0000.parquet`).
//!
//! Hand-written on ureq (already tpv's HTTP client) rather than on the `hf-hub` crate (0.5, read
//! on docs.rs: it fetches a file by name, with a progress bar): what tpv needs beyond that — the
//! choice of a dataset's parquet files from the listing, the conversion's revision, the size and
//! sha256 check against the listing before a file takes its name, and a path check on every name
//! the server sends — would be ours on top of it either way.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::models;

pub mod upload;

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

/// A file of a repo as the hub lists it with `blobs=true`.
#[derive(Deserialize, Clone)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
    /// The file's git blob id (with `blobs=true`).
    #[serde(default, rename = "blobId")]
    blob_id: Option<String>,
}

#[derive(Deserialize, Clone)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// The hub's parquet conversion of a dataset: a revision, cached as huggingface_hub caches it
/// (`refs/refs/convert/parquet`).
const CONVERTED: &str = "refs/convert/parquet";

/// Attempts per file (the first and four retries).
const ATTEMPTS: u32 = 5;

/// tpv's bounds on what it reads into memory from the hub: a repo's listing, a model's
/// config.json, a safetensors header (safetensors' own limit).
const LISTING_BYTES: u64 = 32 << 20;
const CONFIG_BYTES: u64 = 4 << 20;
const HEADER_BYTES: u64 = 100 << 20;

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1")
}

/// The HTTP side: one agent, the endpoint and the token.
struct Hub {
    agent: ureq::Agent,
    base: String,
    /// The token the hub's requests carry: `HF_TOKEN`, or `--token` where a command takes one.
    token: Option<String>,
}

/// What a failed request means for the user.
fn status_error(status: u16, url: &str, what: &str) -> anyhow::Error {
    match status {
        401 | 403 => anyhow::anyhow!(
            "{url}: {status}: {what} is gated or private — accept its terms on its hub page and set HF_TOKEN to a token that may read it"
        ),
        404 => anyhow::anyhow!(
            "{url}: 404: {what} is not on {} (check the name and revision)",
            endpoint()
        ),
        _ => anyhow::anyhow!("{url}: HTTP {status}"),
    }
}

/// Whether an answer is worth asking again for (rate limits and server errors).
fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// How long to wait before retry `attempt` (1-based): 0.2 s doubling, or the server's
/// `Retry-After` (at most 10 s).
fn backoff(attempt: u32, retry_after: Option<u64>) -> Duration {
    let ours = Duration::from_millis(100 << attempt.min(7));
    retry_after.map_or(ours, |s| Duration::from_secs(s.min(10)))
}

impl Hub {
    fn new() -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            base: endpoint(),
            token: std::env::var("HF_TOKEN").ok(),
        }
    }

    fn get(&self, url: &str, range_from: u64) -> Result<ureq::http::Response<ureq::Body>> {
        self.get_range(url, (range_from > 0).then(|| format!("bytes={range_from}-")))
    }

    /// GET with the token and an HTTP `Range` value (`bytes=A-` or `bytes=A-B`).
    fn get_range(&self, url: &str, range: Option<String>) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some(token) = &self.token {
            req = req.header("Authorization", &format!("Bearer {token}"));
        }
        if let Some(range) = range {
            req = req.header("Range", &range);
        }
        req.call().with_context(|| format!("GET {url}"))
    }

    /// A small answer (a listing, a config, a header) in memory: retried like a file, at most
    /// `limit` bytes (a longer one is an error, never read whole). `range`: bytes `A..=B` of the
    /// file, from a server that honours ranges (206) or one that sends the file from its start.
    fn get_small(&self, url: &str, range: Option<(u64, u64)>, limit: u64, what: &str) -> Result<Vec<u8>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut resp = match self.get_range(url, range.map(|(a, b)| format!("bytes={a}-{b}"))) {
                Ok(r) => r,
                // No answer at all (no route, no name): one more try, not the full series.
                Err(e) if attempt < 2 => {
                    tracing::info!("{e:#}; retrying");
                    std::thread::sleep(backoff(attempt, None));
                    continue;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "cannot reach the HF hub for {what} (set HF_ENDPOINT, HF_TOKEN, or put it into the cache)"
                    )));
                }
            };
            let status = resp.status().as_u16();
            if retryable(status) && attempt < ATTEMPTS {
                std::thread::sleep(backoff(attempt, retry_after(&resp)));
                continue;
            }
            // A server that ignores the range sends the file from its start: read up to B only.
            let skip = match (status, range) {
                (206, _) | (200, None) => 0,
                (200, Some((a, _))) => a,
                _ => return Err(status_error(status, url, what)),
            };
            // At most the range (a server may send more), or one byte past the bound to tell.
            let cap = match range {
                Some((a, b)) => skip.saturating_add(b.saturating_sub(a).saturating_add(1)),
                None => limit.saturating_add(1),
            };
            let mut body = Vec::new();
            resp.body_mut()
                .as_reader()
                .take(cap)
                .read_to_end(&mut body)
                .with_context(|| format!("{url}: cannot read the answer"))?;
            let body = body.split_off(usize::try_from(skip).unwrap_or(usize::MAX).min(body.len()));
            match range {
                None if body.len() as u64 > limit => {
                    bail!("{url}: the answer is longer than {limit} bytes (tpv's bound for {what})")
                }
                Some((a, b)) if (body.len() as u64) < b - a + 1 => {
                    bail!("{url}: {} bytes where {} were asked for", body.len(), b - a + 1)
                }
                _ => {}
            }
            return Ok(body);
        }
    }

    /// A repo's commit and files at `revision`, retried like a file.
    fn info(&self, kind: &str, repo_id: &str, revision: &str) -> Result<RepoInfo> {
        let rev = revision.replace('/', "%2F");
        let url = format!("{}/api/{kind}/{repo_id}/revision/{rev}?blobs=true", self.base);
        let what = format!("{} {repo_id} (revision {revision})", &kind[..kind.len() - 1]);
        let text = self.get_small(&url, None, LISTING_BYTES, &what)?;
        let info: RepoInfo = serde_json::from_slice(&text).with_context(|| format!("{url}: unexpected answer"))?;
        if info.sha.len() < 7 || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("{url}: unexpected commit {:?}", info.sha);
        }
        // File names come from the server: each must stay inside the snapshot directory.
        for s in &info.siblings {
            crate::io::check_relative_path(&s.rfilename, &format!("{url}: the hub listed a file"))?;
        }
        Ok(info)
    }

    /// Fetches `url` into `dest`: retried, resumed from `dest.incomplete`, checked against the
    /// listed size and sha256, then renamed into place.
    fn fetch(&self, url: &str, dest: &Path, listed: &Sibling) -> Result<()> {
        let dir = dest.parent().context("no parent directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // One process at a time per file (two runs on a cold cache would interleave their bytes in
        // the partial file); the one that waited finds the file done.
        let lock_path = PathBuf::from(format!("{}.lock", dest.display()));
        let lock =
            std::fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if dest.exists() {
            return Ok(());
        }
        let partial = PathBuf::from(format!("{}.incomplete", dest.display()));
        let size = listed.lfs.as_ref().map(|l| l.size).or(listed.size);
        let bar = progress(&listed.rfilename, size);
        let mut attempt = 0;
        let mut last = String::new();
        let mut wait: Option<u64> = None;
        while attempt < ATTEMPTS {
            attempt += 1;
            if attempt > 1 {
                std::thread::sleep(backoff(attempt - 1, wait.take()));
            }
            let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
            match self.fetch_once(url, &partial, have, &bar) {
                Ok(()) => {}
                Err(Retry(e, retry_after)) => {
                    last = e;
                    wait = retry_after;
                    tracing::info!("{url}: {last}; attempt {attempt} of {ATTEMPTS}");
                    continue;
                }
                Err(Fatal(e)) => {
                    bar.abandon();
                    return Err(e);
                }
            }
            let got = std::fs::metadata(&partial).map_or(0, |m| m.len());
            if let Some(want) = size
                && got != want
            {
                last = format!("got {got} bytes, the hub lists {want}");
                if got > want {
                    std::fs::remove_file(&partial).ok();
                }
                continue;
            }
            if let Some(lfs) = &listed.lfs {
                let sum = sha256_of(&partial)?;
                if !sum.eq_ignore_ascii_case(&lfs.sha256) {
                    std::fs::remove_file(&partial).ok();
                    last = format!("sha256 {sum}, the hub lists {}", lfs.sha256);
                    continue;
                }
            }
            bar.finish_and_clear();
            std::fs::rename(&partial, dest).with_context(|| format!("cannot write {}", dest.display()))?;
            std::fs::remove_file(&lock_path).ok();
            return Ok(());
        }
        bar.abandon();
        bail!(
            "{url}: {last} after {ATTEMPTS} attempts; not used (the part fetched stays in {} and the next run resumes it)",
            partial.display()
        )
    }

    /// One request for the rest of the file after `have` bytes, appended to `partial`.
    fn fetch_once(&self, url: &str, partial: &Path, have: u64, bar: &indicatif::ProgressBar) -> Result<(), Attempt> {
        let mut resp = self.get(url, have).map_err(|e| Retry(format!("{e:#}"), None))?;
        let status = resp.status().as_u16();
        if retryable(status) {
            return Err(Retry(format!("HTTP {status}"), retry_after(&resp)));
        }
        // A partial answer must start where the file stopped; anything else starts over.
        let resumes = status == 206
            && resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
        let append = match status {
            206 if resumes => true,
            206 => {
                std::fs::remove_file(partial).ok();
                return Err(Retry("a partial answer from the wrong offset".into(), None));
            }
            200 => false,
            // The range starts at the end: the partial file is whole.
            416 if have > 0 => return Ok(()),
            _ => return Err(Fatal(status_error(status, url, "the file"))),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(|e| Fatal(anyhow::anyhow!("cannot write {}: {e}", partial.display())))?;
        bar.set_position(if append { have } else { 0 });
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // A cut connection: what arrived is kept, the next attempt resumes after it.
                Err(e) => return Err(Retry(format!("the connection was cut ({e})"), None)),
            };
            file.write_all(&buf[..n])
                .map_err(|e| Fatal(anyhow::anyhow!("cannot write {}: {e}", partial.display())))?;
            bar.inc(n as u64);
        }
        file.sync_all()
            .map_err(|e| Fatal(anyhow::anyhow!("cannot write {}: {e}", partial.display())))?;
        Ok(())
    }
}

/// How one attempt at a file ended.
enum Attempt {
    /// Worth another attempt (rate limit, server error, cut connection), after the server's
    /// Retry-After if it gave one.
    Retry(String, Option<u64>),
    Fatal(anyhow::Error),
}
use Attempt::{Fatal, Retry};

fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    resp.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// A byte progress bar for one file (drawn only on a terminal).
fn progress(name: &str, size: Option<u64>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(size, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar.set_message(name.to_owned());
    bar
}

/// A hub repo id: `name` or `org/name`, each part of letters, digits, `-`, `_` and `.` (the hub's
/// own rule), not `.` or `..`.
fn check_repo_id(repo_id: &str) -> Result<()> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let ok = (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !ok {
        bail!("{repo_id:?} is not a hub repo id (org/name: letters, digits, -, _ and .)");
    }
    Ok(())
}

/// Downloads the files of `files` (all listed by `info`) into `repo_dir`'s snapshot of the
/// commit and points `refs/{revision}` at it.
fn download_files(
    hub: &Hub,
    url_repo: &str,
    repo_dir: &Path,
    revision: &str,
    info: &RepoInfo,
    files: &[Sibling],
) -> Result<PathBuf> {
    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    for file in files {
        let dest = snapshot.join(&file.rfilename);
        if dest.exists() {
            continue;
        }
        let url = format!("{}/{url_repo}/resolve/{}/{}", hub.base, info.sha, file.rfilename);
        eprintln!("downloading {url_repo}/{} …", file.rfilename);
        hub.fetch(&url, &dest, file)?;
    }
    crate::io::write_atomic(&repo_dir.join("refs").join(revision), info.sha.as_bytes())?;
    Ok(snapshot)
}

/// A model repo's listing at `revision` and the files of it tpv needs (at least a config.json
/// and safetensors weights); `doing` names what is refused offline.
fn model_listing(repo_id: &str, revision: &str, doing: &str) -> Result<(Hub, RepoInfo, Vec<Sibling>)> {
    check_repo_id(repo_id)?;
    crate::io::check_relative_path(revision, "the revision")?;
    if offline() {
        bail!("HF_HUB_OFFLINE=1: not {doing} {repo_id}");
    }
    let hub = Hub::new();
    let info = hub.info("models", repo_id, revision)?;
    let files: Vec<Sibling> = info
        .siblings
        .iter()
        .filter(|s| tpv_shared::eval::hf_files::is_needed(&s.rfilename))
        .cloned()
        .collect();
    if !files.iter().any(|f| f.rfilename == "config.json") {
        bail!("{repo_id} has no config.json at {revision}");
    }
    if !files.iter().any(|f| f.rfilename.ends_with(".safetensors")) {
        bail!("{repo_id} has no safetensors weights at {revision} (tpv does not read .bin checkpoints)");
    }
    Ok((hub, info, files))
}

/// Downloads `repo_id` at `revision` into the hub cache unless it is there; returns the snapshot.
pub fn download_model(repo_id: &str, revision: &str) -> Result<PathBuf> {
    let (hub, info, files) = model_listing(repo_id, revision, "downloading")?;
    let repo_dir = models::hub_repo_dir("models", repo_id)?;
    download_files(&hub, repo_id, &repo_dir, revision, &info, &files)
}

/// Downloads from the model repo `repo_id` (a library of published prompts: `tpv push`'s layout)
/// into the hub cache, as models are (retried, resumed, checked against the listing): every one of
/// `paths`, and every file under `prefix` (when given) the repo lists; one listing. Returns the
/// snapshot and the files of `prefix` it holds. A path the repo does not list is an error naming
/// the files it has beside it. Offline, or with everything cached, the cached snapshot answers.
pub fn library_files(repo_id: &str, paths: &[String], prefix: Option<&str>) -> Result<(PathBuf, Vec<String>)> {
    check_repo_id(repo_id)?;
    let repo_dir = models::hub_repo_dir("models", repo_id)?;
    let cached = std::fs::read_to_string(repo_dir.join("refs/main"))
        .ok()
        .map(|rev| repo_dir.join("snapshots").join(rev.trim()))
        .filter(|snapshot| paths.iter().all(|p| snapshot.join(p).is_file()));
    // A prefix asks for whatever the repo has now: only offline does the cache answer for it.
    if let Some(snapshot) = cached.filter(|_| prefix.is_none() || offline()) {
        let under = prefix.map(|p| cached_under(&snapshot, p)).unwrap_or_default();
        return Ok((snapshot, under));
    }
    if offline() {
        bail!(
            "HF_HUB_OFFLINE=1: {repo_id} is not in the hub cache with {}",
            paths.join(", ")
        );
    }
    let hub = Hub::new();
    let info = hub.info("models", repo_id, "main")?;
    let mut files = Vec::new();
    for p in paths {
        crate::io::check_relative_path(p, "a library file")?;
        match info.siblings.iter().find(|s| &s.rfilename == p) {
            Some(s) => files.push(s.clone()),
            None => {
                let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
                let dir = dir.rsplit_once('/').map_or(dir, |(d, _)| d);
                let near: Vec<&str> = info
                    .siblings
                    .iter()
                    .map(|s| s.rfilename.as_str())
                    .filter(|f| f.starts_with(dir))
                    .take(12)
                    .collect();
                bail!(
                    "{repo_id} has no {p} (it has: {})",
                    if near.is_empty() {
                        "nothing there".to_owned()
                    } else {
                        near.join(", ")
                    }
                );
            }
        }
    }
    let under: Vec<Sibling> = match prefix {
        Some(pre) => info
            .siblings
            .iter()
            .filter(|s| s.rfilename.starts_with(pre))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    files.extend(under.iter().cloned());
    let snapshot = download_files(&hub, repo_id, &repo_dir, "main", &info, &files)?;
    Ok((snapshot, under.into_iter().map(|s| s.rfilename).collect()))
}

/// The files under `prefix` (a folder path) in a cached snapshot, as repo paths.
fn cached_under(snapshot: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![snapshot.join(prefix)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(snapshot) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

/// What the preflight learns of a hub model without downloading its weights: its config and
/// its safetensors headers (by HTTP range requests: a few KB, as huggingface_hub's
/// `get_safetensors_metadata` reads them).
pub struct ModelMetadata {
    pub commit: String,
    pub config_json: String,
    /// Every tensor's shape, from all the weight files' headers.
    pub shapes: tpv_shared::model::load::Shapes,
    /// The bytes a download of the model's needed files would fetch.
    pub download_bytes: u64,
}

/// [`ModelMetadata`] of `repo_id` at `revision`; nothing is written to the cache (a snapshot
/// without its weights would pass for a downloaded model).
pub fn model_metadata(repo_id: &str, revision: &str) -> Result<ModelMetadata> {
    let (hub, info, files) = model_listing(repo_id, revision, "asking the hub about")?;
    let size = |s: &Sibling| s.lfs.as_ref().map(|l| l.size).or(s.size);
    let url = |file: &str| format!("{}/{repo_id}/resolve/{}/{file}", hub.base, info.sha);
    let config = hub.get_small(&url("config.json"), None, CONFIG_BYTES, "config.json")?;
    let config_json = String::from_utf8(config).with_context(|| format!("{repo_id}: config.json is not UTF-8"))?;
    let weights = files.iter().filter(|f| f.rfilename.ends_with(".safetensors"));
    let mut shapes = tpv_shared::model::load::Shapes::new();
    for file in weights {
        let name = &file.rfilename;
        let len = hub.get_small(&url(name), Some((0, 7)), 8, name)?;
        let n = u64::from_le_bytes(len.as_slice().try_into().context("8 bytes")?);
        if !(2..=HEADER_BYTES).contains(&n) {
            bail!("{repo_id}/{name}: a safetensors header of {n} bytes (safetensors' limit is {HEADER_BYTES})");
        }
        let header = hub.get_small(&url(name), Some((8, 7 + n)), n, name)?;
        let (mut these, data) =
            tpv_shared::model::load::header_json_shapes(&header).with_context(|| format!("{repo_id}/{name}"))?;
        if let Some(listed) = size(file)
            && 8 + n + data != listed
        {
            bail!(
                "{repo_id}/{name}: its header describes {} bytes, the hub lists {listed}",
                8 + n + data
            );
        }
        shapes.extend(these.drain());
    }
    Ok(ModelMetadata {
        commit: info.sha.clone(),
        config_json,
        shapes,
        download_bytes: files.iter().filter_map(size).sum(),
    })
}

/// The parquet files of `config`'s `splits` in a listing: under the config's directory
/// ([`crate::data::config_dir`]: `mnli/train-00000-of-00001.parquet`, `mnli/train/0000.parquet`,
/// the default config's `data/`) when the repo has one, else anywhere; the split is the file's
/// name before `-` or its directory's name (the conversion's `partial-SPLIT` too).
fn dataset_files(siblings: &[Sibling], config: Option<&str>, splits: &[&str]) -> Vec<Sibling> {
    let parquet: Vec<&Sibling> = siblings.iter().filter(|s| s.rfilename.ends_with(".parquet")).collect();
    let under = |s: &Sibling, dir: &str| s.rfilename.starts_with(&format!("{dir}/"));
    // A repo whose files sit in directories of other names (glue: `qqp/`, `sst2/`) is organised by
    // config: another config's files are never a stand-in for the one asked for.
    let by_config = parquet.iter().any(|s| {
        s.rfilename
            .split_once('/')
            .is_some_and(|(top, _)| top != "data" && crate::data::split_of(Path::new(top)).is_none())
    });
    let scoped: Vec<&Sibling> = match crate::data::config_dir(config, |d| parquet.iter().any(|s| under(s, d))) {
        Some(dir) => parquet.iter().filter(|s| under(s, &dir)).copied().collect(),
        None if config.is_some() && by_config => Vec::new(),
        None => parquet,
    };
    scoped
        .into_iter()
        .filter(|s| crate::data::split_of(Path::new(&s.rfilename)).is_some_and(|sp| splits.contains(&sp.as_str())))
        .cloned()
        .collect()
}

/// The snapshot of dataset `repo_id` in the hub cache holding `config`'s `splits`: the cached one
/// when it has all of them (`refs/main`, else the conversion's ref), otherwise downloaded — the
/// repo's own parquet files, else the hub's conversion.
pub fn dataset(repo_id: &str, config: Option<&str>, splits: &[&str]) -> Result<PathBuf> {
    check_repo_id(repo_id)?;
    let repo_dir = models::hub_repo_dir("datasets", repo_id)?;
    for rev in ["main", CONVERTED] {
        if let Ok(sha) = std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
            let snapshot = repo_dir.join("snapshots").join(sha.trim());
            // A snapshot organised by config that lacks this one's directory holds other configs.
            let other_configs = config.is_some_and(|c| !snapshot.join(c).is_dir()) && has_config_dirs(&snapshot);
            let files = crate::data::split_files(&snapshot, config).unwrap_or_default();
            if splits.iter().all(|s| files.contains_key(*s)) && !other_configs {
                return Ok(snapshot);
            }
        }
    }
    let what = format!(
        "dataset {repo_id}{}",
        config.map_or(String::new(), |c| format!(" (config {c})"))
    );
    if offline() {
        bail!(
            "{what} is not in the local hub cache ({}) and HF_HUB_OFFLINE=1 forbids downloading it: run `tpv fetch` for its task where the hub is reachable",
            repo_dir.display()
        );
    }
    let hub = Hub::new();
    let url_repo = format!("datasets/{repo_id}");
    let main = hub.info("datasets", repo_id, "main")?;
    let own = dataset_files(&main.siblings, config, splits);
    if has_splits(&own, splits) {
        return download_files(&hub, &url_repo, &repo_dir, "main", &main, &own);
    }
    let converted = hub.info("datasets", repo_id, CONVERTED).with_context(|| {
        format!("{what} has no parquet files of its own; its parquet conversion is not there either")
    })?;
    let files = dataset_files(&converted.siblings, config, splits);
    if !has_splits(&files, splits) {
        bail!(
            "{what}: neither the repo nor its parquet conversion has the splits {}{} (listed: {} files)",
            splits.join(", "),
            config.map_or(String::new(), |c| format!(" under {c}/")),
            converted.siblings.len()
        );
    }
    download_files(&hub, &url_repo, &repo_dir, CONVERTED, &converted, &files)
}

/// Whether `files` hold every one of `splits` (a task's train and held-out splits both: a
/// missing held-out split would silently become a split of train).
fn has_splits(files: &[Sibling], splits: &[&str]) -> bool {
    splits.iter().all(|sp| {
        files
            .iter()
            .any(|f| crate::data::split_of(Path::new(&f.rfilename)).as_deref() == Some(*sp))
    })
}

/// Whether a snapshot has directories named after configs (not `data/` or a split's).
fn has_config_dirs(snapshot: &Path) -> bool {
    std::fs::read_dir(snapshot).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            e.path().is_dir() && name != "data" && crate::data::split_of(Path::new(&name)).is_none()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(name: &str) -> Sibling {
        Sibling {
            rfilename: name.into(),
            size: None,
            lfs: None,
            blob_id: None,
        }
    }

    #[test]
    fn dataset_files_are_the_configs_needed_splits() {
        let listing: Vec<Sibling> = [
            "README.md",
            "mnli/train-00000-of-00002.parquet",
            "mnli/train-00001-of-00002.parquet",
            "mnli/validation_matched-00000-of-00001.parquet",
            "mnli/test_matched-00000-of-00001.parquet",
            "qqp/train-00000-of-00001.parquet",
        ]
        .map(sib)
        .to_vec();
        let names = |v: Vec<Sibling>| v.into_iter().map(|s| s.rfilename).collect::<Vec<_>>();
        assert_eq!(
            names(dataset_files(&listing, Some("mnli"), &["train", "validation_matched"])),
            [
                "mnli/train-00000-of-00002.parquet",
                "mnli/train-00001-of-00002.parquet",
                "mnli/validation_matched-00000-of-00001.parquet"
            ]
        );
        // The conversion's layout, and a repo without config directories.
        let converted: Vec<Sibling> = ["plain_text/train/0000.parquet", "plain_text/partial-test/0000.parquet"]
            .map(sib)
            .to_vec();
        assert_eq!(
            names(dataset_files(&converted, Some("plain_text"), &["train", "test"])),
            ["plain_text/train/0000.parquet", "plain_text/partial-test/0000.parquet"]
        );
        let flat: Vec<Sibling> = ["data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"]
            .map(sib)
            .to_vec();
        assert_eq!(
            names(dataset_files(&flat, None, &["train"])),
            ["data/train-00000-of-00001.parquet"]
        );
        // MATH-lighteval: the default config in data/, one directory per subject beside it.
        let math: Vec<Sibling> = [
            "data/train-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
            "algebra/train-00000-of-00001.parquet",
            "algebra/test-00000-of-00001.parquet",
        ]
        .map(sib)
        .to_vec();
        assert_eq!(
            names(dataset_files(&math, None, &["train", "test"])),
            ["data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"]
        );
        assert_eq!(
            names(dataset_files(&math, Some("algebra"), &["train"])),
            ["algebra/train-00000-of-00001.parquet"]
        );
        // A config the repo does not have: nothing (not another config's files).
        assert!(dataset_files(&listing, Some("qnli"), &["train"]).is_empty());
        assert_eq!(dataset_files(&flat, Some("default"), &["train"]).len(), 1);
    }
}
