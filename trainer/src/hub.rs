//! Downloading a model from the HF hub into the local hub cache, in the layout `huggingface_hub`
//! uses (`models--ORG--NAME/snapshots/COMMIT/FILE`, `refs/REVISION`), so Python tools and tpv share
//! one cache. The endpoint is `$HF_ENDPOINT` (default `https://huggingface.co`), the token
//! `$HF_TOKEN`; `$HF_HUB_OFFLINE=1` forbids the network.
//!
//! Protocol: `GET {endpoint}/api/models/{repo}/revision/{revision}` gives the commit (`sha`) and the
//! file list (`siblings`); each wanted file comes from `{endpoint}/{repo}/resolve/{commit}/{file}`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::models;

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
    let mut req = agent.get(url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    req.call().with_context(|| format!("GET {url}"))
}

/// The files tpv needs from a model repo: config, tokenizer, and the safetensors weights (one
/// file or the shards an index names).
fn wanted(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| tpv_shared::eval::hf_files::is_needed(f))
        .cloned()
        .collect()
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

/// Downloads `repo_id` at `revision` into the hub cache unless it is there; returns the snapshot.
pub fn download_model(repo_id: &str, revision: &str) -> Result<PathBuf> {
    check_repo_id(repo_id)?;
    crate::io::check_relative_path(revision, "the revision")?;
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        bail!("HF_HUB_OFFLINE=1: not downloading {repo_id}");
    }
    let base = endpoint();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .build()
        .into();
    let info_url = format!("{base}/api/models/{repo_id}/revision/{revision}");
    let text = get(&agent, &info_url)
        .with_context(|| {
            format!("cannot reach the HF hub for {repo_id} (set HF_ENDPOINT, HF_TOKEN, or download it into the cache)")
        })?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{info_url}: cannot read the answer"))?;
    let info: RepoInfo = serde_json::from_str(&text).with_context(|| format!("{info_url}: unexpected answer"))?;
    if info.sha.len() < 7 || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("{info_url}: unexpected commit {:?}", info.sha);
    }
    let files = wanted(&info.siblings.into_iter().map(|s| s.rfilename).collect::<Vec<_>>());
    // File names come from the server: each must stay inside the snapshot directory.
    for f in &files {
        crate::io::check_relative_path(f, &format!("{info_url}: the hub listed a file"))?;
    }
    if !files.iter().any(|f| f == "config.json") {
        bail!("{repo_id} has no config.json at {revision}");
    }
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!("{repo_id} has no safetensors weights at {revision} (tpv does not read .bin checkpoints)");
    }
    let repo_dir = models::hub_cache()?.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    for file in &files {
        let dest = snapshot.join(file);
        if dest.exists() {
            continue;
        }
        let url = format!("{base}/{repo_id}/resolve/{}/{file}", info.sha);
        eprintln!("downloading {repo_id}/{file} …");
        let mut resp = get(&agent, &url)?;
        save(&mut resp.body_mut().as_reader(), &dest).with_context(|| format!("downloading {url}"))?;
    }
    let refs = repo_dir.join("refs").join(revision);
    crate::io::write_atomic(&refs, info.sha.as_bytes())?;
    Ok(snapshot)
}

fn save(reader: &mut dyn std::io::Read, dest: &Path) -> Result<()> {
    let dir = dest.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::copy(reader, &mut tmp)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}
