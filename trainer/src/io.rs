//! Files: reading prompts of any supported format, and writing outputs atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tpv_shared::peft;
use tpv_shared::runfile::{self, FileKind};
use tpv_shared::{Document, SoftPrompt};

/// Files larger than this are refused before reading: a run file of a 100-token prompt for a
/// d=16384 model is 13 MB, so anything this big is the wrong file (a model's weights, say).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// A prompt file and where it was read from.
pub struct Loaded {
    pub path: PathBuf,
    pub doc: Document,
}

/// The most a config file may hold.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The most a data file (JSONL, CSV, TSV, parquet) may hold.
pub const MAX_DATA_BYTES: u64 = 8 << 30;

/// Reads a prompt file (run file, adapter) whole: [`read_limited`] at 1 GiB.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    read_limited(path, MAX_FILE_BYTES)
}

/// A text file (a config, a data file) read with [`read_limited`].
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// Reads a whole file, refusing anything but a regular file (a device such as /dev/zero never
/// ends, a FIFO may never answer) and files over `limit` bytes; the read itself stops at the
/// limit, so a file that grows meanwhile cannot take more.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let too_big = |len: u64| {
        anyhow::anyhow!(
            "{} is {} MiB, over the {} MiB such a file may have (the wrong file?)",
            path.display(),
            len >> 20,
            limit >> 20
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a run file, a peft `adapter_model.safetensors` (with the `adapter_config.json` beside it
/// when there is one), or a peft adapter directory. Peft adapters become task prompts without an
/// origin.
pub fn load(path: &Path) -> Result<Loaded> {
    load_inner(path).with_context(|| format!("reading {}", path.display()))
}

/// The prompt of [`load`].
pub fn load_prompt(path: &Path) -> Result<SoftPrompt> {
    Ok(load(path)?.doc.prompt)
}

fn load_inner(path: &Path) -> Result<Loaded> {
    let (weights, config) = if path.is_dir() {
        let weights = path.join(peft::WEIGHTS_FILE);
        if !weights.exists() {
            if path.join("adapter_model.bin").exists() {
                bail!(
                    "adapter_model.bin is a pickle file, which tpv does not execute; re-save the adapter with safe_serialization=True"
                );
            }
            bail!("no {} in the directory", peft::WEIGHTS_FILE);
        }
        let config = path.join(peft::CONFIG_FILE);
        if !config.exists() {
            bail!("no {} in the directory", peft::CONFIG_FILE);
        }
        (weights, Some(config))
    } else {
        let config = path.with_file_name(peft::CONFIG_FILE);
        (path.to_owned(), config.exists().then_some(config))
    };
    let bytes = read_bytes(&weights)?;
    // The config is read only when the weights turn out to be peft's.
    let config_json = match &config {
        Some(c) if runfile::sniff(&bytes)? == FileKind::PeftWeights => Some(read_text(c, MAX_CONFIG_BYTES)?),
        _ => None,
    };
    Ok(Loaded {
        path: weights,
        doc: Document::read(&bytes, config_json.as_deref())?,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename, so
/// a reader never sees half a file and an interrupted write leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // Temp files are private (0600); results are meant to be shared, like any file `cp` makes.
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
        0o644,
    ));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The name prefix of [`write_atomic`]'s temporary files.
pub const TEMP_PREFIX: &str = ".tpv-tmp-";

/// Removes the temporary files a killed [`write_atomic`] left in `dir` (a kill during a
/// checkpoint write used to leave one forever). Only for a directory this process alone writes.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_file());
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!("removed {}, left by an interrupted write", entry.path().display());
        }
    }
}

/// Writes a prompt as a run file, atomically.
pub fn write_run(path: &Path, prompt: &SoftPrompt) -> Result<()> {
    let bytes = runfile::write_run(prompt).with_context(|| format!("serializing {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Creates `dir` if needed and checks that a file can be written in it (a temporary file,
/// removed again).
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write to the output directory {}", dir.display()))?;
    Ok(())
}

/// A name read from a file, a config or a server that becomes part of a path under a directory
/// we own (a task name, a hub file name): relative, made of plain components (no `..`, no root, no
/// `.`), no empty component, no NUL, backslash or control character, at most 255 bytes a
/// component. `what` names it in the error.
pub fn check_relative_path(name: &str, what: &str) -> Result<()> {
    use std::path::Component;
    let bad = |why: &str| anyhow::anyhow!("{what} {name:?} {why}");
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("contains a control character or a backslash"));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err(bad("has an empty path component"));
        }
        if part.len() > tpv_shared::study::NAME_MAX {
            return Err(bad("has a path component over 255 bytes (NAME_MAX)"));
        }
        if part == "." || part == ".." {
            return Err(bad("leaves its directory (`..`, `.` or an absolute path)"));
        }
    }
    if !Path::new(name).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("leaves its directory (`..`, `.` or an absolute path)"));
    }
    Ok(())
}

/// [`check_relative_path`] for a single component (no `/` either), in Unicode NFC: "café" typed
/// on one machine (NFC) and read from a file written on another (NFD) would otherwise be two
/// tasks, two directories and two identical-looking rows.
pub fn check_file_name(name: &str, what: &str) -> Result<()> {
    if name.contains('/') {
        bail!("{what} {name:?} contains a `/`");
    }
    check_relative_path(name, what)?;
    if !unicode_normalization_alignments::is_nfc(name) {
        use unicode_normalization_alignments::UnicodeNormalization;
        let nfc: String = name.nfc().map(|(c, _)| c).collect();
        bail!(
            "{what} {name:?} is not in Unicode NFC (its composed form is {nfc:?}): write it composed, as most keyboards and editors do"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_their_directory_are_refused() {
        for ok in [
            "config.json",
            "model-00001-of-00002.safetensors",
            "sub/dir/file.txt",
            "sst2",
            "a.b",
        ] {
            assert!(check_relative_path(ok, "name").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "model-x/../../../X.safetensors",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "./a",
            "a/",
            "a\\..\\b",
            "a\nb",
            "a\0b",
        ] {
            assert!(check_relative_path(bad, "name").is_err(), "{bad:?}");
        }
        assert!(check_file_name("a/b", "task name").is_err());
        assert!(check_file_name(&"x".repeat(256), "task name").is_err());
        // Issue 32 (14): "café" in NFD ran as a second task beside the NFC one.
        assert!(check_file_name("caf\u{e9}", "task name").is_ok());
        let err = check_file_name("cafe\u{301}", "task name").unwrap_err().to_string();
        assert!(err.contains("NFC") && err.contains("caf\u{e9}"), "{err}");
    }
}
