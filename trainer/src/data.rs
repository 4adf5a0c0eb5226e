//! Data: records from JSONL/CSV/TSV/parquet files, HF datasets in the local hub cache (parquet),
//! or the embedded default's offline datasets; the paper's splits (seed 42, stratified), k-shot
//! sets, and a fingerprint of the result.
//!
//! Splits (docs/method.md §5): a dataset with more than 10,000 training examples gives 1,000 of them to
//! validation and its original validation/test split becomes the test set; a smaller one keeps its
//! training set and halves the original validation split into validation and test. A dataset that
//! comes as one file (the offline snippets) first holds out min(1,000, 20%) stratified examples to
//! play the original validation split.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tpv_shared::merge::SplitMix64;
use tpv_shared::records;
use tpv_shared::tasks::{self, Record, TaskSpec};

use crate::assets;
use crate::config::{AlsoTask, DataSection, TaskRef, is_file_like};
use crate::parquet_guard;

/// The examples of a run, as records, with the task that reads them.
#[derive(Debug, Clone)]
pub struct Splits {
    pub task: TaskSpec,
    /// The task names (more than one for a multi-task run).
    pub tasks: Vec<String>,
    pub train: Vec<Record>,
    pub validation: Vec<Record>,
    pub test: Vec<Record>,
    /// sha256 (hex, 16 chars) of the task name and every record of every split, in order.
    pub fingerprint: String,
}

/// Loads the data of a config and of each `also` task (multi-task training).
pub fn load_all(cfg: &DataSection) -> Result<Vec<Splits>> {
    let mut all = vec![load(cfg)?];
    for also in &cfg.also {
        let other = match also {
            AlsoTask::Name(name) => DataSection {
                train: name.clone(),
                also: Vec::new(),
                dataset_dir: None,
                validation: None,
                test: None,
                task: None,
                name: None,
                ..cfg.clone()
            },
            AlsoTask::Data(section) => DataSection {
                also: Vec::new(),
                ..(**section).clone()
            },
        };
        let label = other.name.clone().unwrap_or_else(|| other.train.clone());
        all.push(load(&other).with_context(|| format!("data.also task {label}"))?);
    }
    Ok(all)
}

/// What a run records about its data: the task used for metrics, the task names, the fingerprint.
#[derive(Debug, Clone)]
pub struct DataInfo {
    pub task: TaskSpec,
    pub tasks: Vec<String>,
    pub fingerprint: String,
}

/// One description of one or several tasks' data: for several, a generic task scored by exact
/// match over the union of their label sets, and a fingerprint covering every task's.
pub fn describe(all: &[Splits]) -> DataInfo {
    if let [one] = all {
        return DataInfo {
            task: one.task.clone(),
            tasks: one.tasks.clone(),
            fingerprint: one.fingerprint.clone(),
        };
    }
    let names: Vec<String> = all.iter().map(|s| s.task.name.clone()).collect();
    let mut task = tasks::plain();
    task.name = names.join("+");
    // The union of the label sets (in order), so rank scoring works on a multi-task run when
    // every task has one.
    if all.iter().all(|s| !s.task.labels.is_empty()) {
        for s in all {
            for l in &s.task.labels {
                if !task.labels.contains(l) {
                    task.labels.push(l.clone());
                }
            }
        }
    }
    let mut hasher = Sha256::new();
    for s in all {
        hasher.update(s.fingerprint.as_bytes());
    }
    DataInfo {
        task,
        tasks: names,
        fingerprint: format!("{:x}", hasher.finalize())[..16].to_owned(),
    }
}

/// Loads the data a config describes and splits it.
pub fn load(cfg: &DataSection) -> Result<Splits> {
    let (task, train, validation, test) = if is_file_like(&cfg.train) {
        let task = match &cfg.task {
            None => tasks::plain(),
            Some(TaskRef::Name(n)) => tasks::get(n)?,
            Some(TaskRef::Custom(t)) => (**t).clone(),
        };
        let train = read_records(Path::new(&cfg.train))?;
        let validation = cfg
            .validation
            .as_deref()
            .map(|p| read_records(Path::new(p)))
            .transpose()?;
        let test = cfg.test.as_deref().map(|p| read_records(Path::new(p))).transpose()?;
        match (validation, test) {
            (Some(v), Some(t)) => (task, train, v, t),
            (held_out, None) => {
                let (tr, v, t) = paper_split(train, held_out, &task, cfg.split_seed);
                (task, tr, v, t)
            }
            (None, Some(_)) => bail!("data.test without data.validation: give both, or neither"),
        }
    } else {
        let task = tasks::get(&cfg.train)?;
        let (records, held_out) = builtin_records(&task, cfg.dataset_dir.as_deref())?;
        let (tr, v, t) = paper_split(records, held_out, &task, cfg.split_seed);
        (task, tr, v, t)
    };
    let mut task = task;
    if let Some(name) = &cfg.name {
        task.name.clone_from(name);
    }
    for (name, recs) in [("train", &train), ("validation", &validation), ("test", &test)] {
        for (i, r) in recs.iter().enumerate().take(1000) {
            task.render(r, tasks::Style::T5)
                .and_then(|_| task.target(r))
                .with_context(|| format!("{name} example {}", i + 1))?;
        }
    }
    let seed = cfg.split_seed;
    let train = match cfg.shots {
        Some(k) => stratified_take(train, k, &task, seed ^ 0x5eed_0001).0,
        None => train,
    };
    let cap = |recs: Vec<Record>, n: Option<usize>, salt: u64| match n {
        Some(n) if n < recs.len() => stratified_take(recs, n, &task, seed ^ salt).0,
        _ => recs,
    };
    let train = cap(train, cfg.max_train, 0x5eed_0002);
    let validation = cap(validation, cfg.max_validation, 0x5eed_0003);
    let test = cap(test, cfg.max_test, 0x5eed_0004);
    if train.is_empty() {
        bail!("the training set is empty");
    }
    let fingerprint = fingerprint(&task, &[&train, &validation, &test]);
    Ok(Splits {
        tasks: vec![task.name.clone()],
        task,
        train,
        validation,
        test,
        fingerprint,
    })
}

fn fingerprint(task: &TaskSpec, splits: &[&Vec<Record>]) -> String {
    let mut h = Sha256::new();
    h.update(task.name.as_bytes());
    for (i, s) in splits.iter().enumerate() {
        h.update(format!("\u{0}split{i}:{}", s.len()).as_bytes());
        for r in s.iter() {
            for (k, v) in r {
                h.update(k.as_bytes());
                h.update([0]);
                h.update(v.as_bytes());
                h.update([1]);
            }
            h.update([2]);
        }
    }
    let hex = format!("{:x}", h.finalize());
    hex[..16].to_owned()
}

/// The paper's split of `train` (and its original held-out split, if any) into train, validation
/// and test.
pub fn paper_split(
    train: Vec<Record>,
    held_out: Option<Vec<Record>>,
    task: &TaskSpec,
    seed: u64,
) -> (Vec<Record>, Vec<Record>, Vec<Record>) {
    let (train, held_out) = match held_out {
        Some(h) => (train, h),
        None => {
            let n = 1000.min(train.len() / 5);
            let (h, rest) = stratified_take(train, n, task, seed ^ 0x401d);
            (rest, h)
        }
    };
    if train.len() > 10_000 {
        let (validation, train) = stratified_take(train, 1000, task, seed);
        (train, validation, held_out)
    } else {
        let half = held_out.len() / 2;
        let (validation, test) = stratified_take(held_out, half, task, seed);
        (train, validation, test)
    }
}

/// `n` records chosen stratified by class (proportional quotas, largest remainders first), and
/// the rest; both keep the original order. Deterministic for a seed.
pub fn stratified_take(records: Vec<Record>, n: usize, task: &TaskSpec, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let total = records.len();
    if n >= total {
        return (records, Vec::new());
    }
    let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        groups.entry(task.class_of(r)).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed);
    let mut quotas: Vec<(Option<usize>, usize, f64)> = groups
        .iter()
        .map(|(c, idx)| {
            let exact = n as f64 * idx.len() as f64 / total as f64;
            (*c, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = n - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
    by_remainder.sort_by(|&a, &b| quotas[b].2.total_cmp(&quotas[a].2).then(a.cmp(&b)));
    for &i in &by_remainder {
        if left == 0 {
            break;
        }
        quotas[i].1 += 1;
        left -= 1;
    }
    let mut chosen = vec![false; total];
    for (class, quota, _) in &quotas {
        let mut idx = groups[class].clone();
        rng.shuffle(&mut idx);
        for &i in idx.iter().take(*quota) {
            chosen[i] = true;
        }
    }
    let (mut taken, mut rest) = (Vec::with_capacity(n), Vec::with_capacity(total - n));
    for (r, c) in records.into_iter().zip(chosen) {
        if c { taken.push(r) } else { rest.push(r) }
    }
    (taken, rest)
}

/// Records of a JSONL, JSON, CSV, TSV or parquet file (by extension). Values that are not
/// strings become text by `tpv_shared::records`' rule (lists joined with `|||`). A parquet file
/// is one split for `parquet_guard`'s limits.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    read_records_in(path, &mut None)
}

/// [`read_records`], charging parquet to the split's `budget` (made from the environment when
/// `None`).
fn read_records_in(path: &Path, budget: &mut Option<parquet_guard::Budget>) -> Result<Vec<Record>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    match ext.as_str() {
        // The shared parser (the web app's pasted examples use it too).
        "jsonl" => records::parse_jsonl(&crate::io::read_text(path, crate::io::MAX_DATA_BYTES)?)
            .with_context(|| path.display().to_string()),
        "json" => records::parse_json(&crate::io::read_text(path, crate::io::MAX_DATA_BYTES)?)
            .with_context(|| path.display().to_string()),
        "csv" => read_delimited(path, b','),
        "tsv" => read_delimited(path, b'\t'),
        "parquet" => read_parquet(path, budget),
        _ => bail!(
            "{}: unknown data format (expected .jsonl, .csv or .tsv)",
            path.display()
        ),
    }
}

/// A parquet file's records: checked before anything is sized from it, within the split's
/// `budget` (rows and decoded bytes; `parquet_guard`'s limits).
fn read_parquet(path: &Path, budget: &mut Option<parquet_guard::Budget>) -> Result<Vec<Record>> {
    let budget = match budget {
        Some(b) => b,
        None => budget.insert(parquet_guard::Budget::new(parquet_guard::Limits::from_env()?)),
    };
    Ok(parquet_guard::read_records(path, budget)?)
}

/// Split name → its files, found under `root` (a dataset snapshot or any directory): files named
/// `SPLIT-*.{parquet,jsonl,csv,tsv}` or inside a directory named after the split, preferring those
/// under a `config` subdirectory when there is one.
pub fn split_files(root: &Path, config: Option<&str>) -> Result<BTreeMap<String, Vec<std::path::PathBuf>>> {
    let base = match config_dir(config, |d| root.join(d).is_dir()) {
        Some(d) => root.join(d),
        None => root.to_owned(),
    };
    let mut found: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    let mut stack = vec![(base, 0)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if depth < 3 {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "parquet" | "jsonl" | "csv" | "tsv") {
                continue;
            }
            let Some(split) = split_of(&path) else { continue };
            found.entry(split).or_default().push(path);
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    Ok(found)
}

/// The top directory of a dataset (a snapshot, or a hub listing: `has_dir` says which exist) that
/// holds `config`'s files: the config's own (`mnli/`), else, for the default config (none named),
/// the conversion's `default/` or the repo's `data/` (MATH-lighteval keeps its default config in
/// `data/` beside one directory per subject). None: the whole dataset.
pub fn config_dir(config: Option<&str>, has_dir: impl Fn(&str) -> bool) -> Option<String> {
    let c = config.unwrap_or("default");
    if has_dir(c) {
        Some(c.to_owned())
    } else if c == "default" && has_dir("data") {
        Some("data".to_owned())
    } else {
        None
    }
}

/// The split a data file belongs to: its name before the first `-` or `.`
/// (`train-00000-of-00001.parquet`), else its directory's name (`train/0000.parquet`; the hub's
/// parquet conversion also writes `partial-train/`). One rule for reading a snapshot and for
/// choosing what to download (`hub::dataset`).
pub fn split_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split(['-', '.']).next().unwrap_or("");
    if is_split_name(stem) {
        return Some(stem.to_owned());
    }
    let parent = path.parent()?.file_name()?.to_str()?;
    let parent = parent.strip_prefix("partial-").unwrap_or(parent);
    is_split_name(parent).then(|| parent.to_owned())
}

fn is_split_name(s: &str) -> bool {
    matches!(s, "train" | "validation" | "test" | "dev") || s.starts_with("validation_") || s.starts_with("test_")
}

fn read_split(files: &BTreeMap<String, Vec<std::path::PathBuf>>, split: &str) -> Result<Option<Vec<Record>>> {
    let Some(paths) = files.get(split) else { return Ok(None) };
    let mut out = Vec::new();
    // One budget for all of the split's files.
    let mut budget = None;
    for p in paths {
        out.extend(read_records_in(p, &mut budget)?);
    }
    Ok(Some(out))
}

fn read_delimited(path: &Path, delimiter: u8) -> Result<Vec<Record>> {
    let text = crate::io::read_limited(path, crate::io::MAX_DATA_BYTES)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(text.as_slice());
    let headers = reader.headers()?.clone();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{} row {}", path.display(), i + 2))?;
        out.push(
            headers
                .iter()
                .zip(row.iter())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
    }
    Ok(out)
}

/// The training records and the original held-out split of a built-in task: an offline asset,
/// or the task's HF dataset from `dataset_dir` or the local hub cache (parquet, as the hub
/// stores it). Class tasks drop records without a gold label (SNLI's −1).
fn builtin_records(task: &TaskSpec, dataset_dir: Option<&Path>) -> Result<(Vec<Record>, Option<Vec<Record>>)> {
    if let Some(asset) = assets::for_task(&task.name) {
        let path = assets::ensure(asset)?;
        let bytes = crate::io::read_limited(&path, crate::io::MAX_DATA_BYTES)?;
        let text = String::from_utf8_lossy(&bytes);
        let records = if path.extension().is_some_and(|e| e == "json" || e == "jsonl") {
            records::parse_json(&text).with_context(|| path.display().to_string())?
        } else {
            parse_snippets(&text).with_context(|| format!("parsing {}", path.display()))?
        };
        let before = records.len();
        let records: Vec<Record> = records.into_iter().filter(|r| task.class_of(r).is_some()).collect();
        if records.len() < before {
            tracing::info!(
                "{}: dropped {} records without a label",
                task.name,
                before - records.len()
            );
        }
        return Ok((records, None));
    }
    let root = match dataset_dir {
        Some(d) => d.to_owned(),
        None => {
            let held = task.origin.held_out_split.as_deref().unwrap_or("validation");
            crate::hub::dataset(&task.origin.dataset, task.origin.config.as_deref(), &["train", held]).with_context(
                || {
                    format!(
                        "task {} reads HF dataset {}{}",
                        task.name,
                        task.origin.dataset,
                        tasks::hub_layout(&task.name)
                            .map_or(String::new(), |l| format!(" (where the hub keeps it: {l})"))
                    )
                },
            )?
        }
    };
    let files = split_files(&root, task.origin.config.as_deref())?;
    let train = read_split(&files, "train")?.with_context(|| {
        format!(
            "{}: no train split (found: {:?})",
            root.display(),
            files.keys().collect::<Vec<_>>()
        )
    })?;
    let held_name = task.origin.held_out_split.as_deref().unwrap_or("validation");
    let held_out = read_split(&files, held_name)?;
    let keep = |recs: Vec<Record>| -> Vec<Record> {
        if task.labels.is_empty() {
            return recs;
        }
        let before = recs.len();
        let kept: Vec<Record> = recs.into_iter().filter(|r| task.class_of(r).is_some()).collect();
        if kept.len() < before {
            tracing::info!(
                "{}: dropped {} records without a gold label",
                task.name,
                before - kept.len()
            );
        }
        kept
    };
    Ok((keep(train), held_out.map(keep)))
}

/// Hutto & Gilbert's ground-truth files: `id \t valence \t text`; label 1 when the mean valence
/// is positive, 0 when negative; neutral (0.0) snippets are dropped.
pub fn parse_snippets(text: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(id), Some(valence), Some(sentence)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("line {}: expected id, valence and text separated by tabs", i + 1)
        };
        let v: f64 = valence
            .trim()
            .parse()
            .with_context(|| format!("line {}: valence {valence:?}", i + 1))?;
        if v == 0.0 {
            continue;
        }
        let mut r = Record::new();
        r.insert("id".into(), id.to_owned());
        r.insert("valence".into(), valence.trim().to_owned());
        r.insert("sentence".into(), sentence.trim().to_owned());
        r.insert("label".into(), if v > 0.0 { "1" } else { "0" }.into());
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(labels: &[usize]) -> Vec<Record> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut r = Record::new();
                r.insert("sentence".into(), format!("s{i}"));
                r.insert("label".into(), l.to_string());
                r
            })
            .collect()
    }

    #[test]
    fn stratified_take_keeps_class_proportions_and_is_deterministic() {
        let task = tasks::get("sst2").unwrap();
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i % 4 == 0)).collect(); // 25% positive
        let (a, rest) = stratified_take(recs(&labels), 20, &task, 42);
        assert_eq!(a.len(), 20);
        assert_eq!(rest.len(), 80);
        assert_eq!(a.iter().filter(|r| r["label"] == "1").count(), 5);
        let (b, _) = stratified_take(recs(&labels), 20, &task, 42);
        assert_eq!(a, b);
        let (c, _) = stratified_take(recs(&labels), 20, &task, 43);
        assert_ne!(a, c);
    }

    #[test]
    fn the_paper_split_rule() {
        let task = tasks::get("sst2").unwrap();
        // Small dataset with a held-out split: train kept, held-out halved.
        let (tr, v, t) = paper_split(recs(&[0, 1].repeat(50)), Some(recs(&[0, 1].repeat(10))), &task, 42);
        assert_eq!((tr.len(), v.len(), t.len()), (100, 10, 10));
        // Large: 1,000 of train become validation, the held-out split is the test set.
        let (tr, v, t) = paper_split(recs(&[0, 1].repeat(5001)), Some(recs(&[0, 1].repeat(10))), &task, 42);
        assert_eq!((tr.len(), v.len(), t.len()), (9002, 1000, 20));
        // One file: 20% (at most 1,000) held out first, then halved.
        let (tr, v, t) = paper_split(recs(&[0, 1].repeat(50)), None, &task, 42);
        assert_eq!((tr.len(), v.len(), t.len()), (80, 10, 10));
    }

    #[test]
    fn snippets_parse_and_drop_neutral() {
        let text = "\u{feff}1_1\t2.266\tA fine film.\r\n1_2\t0.0\tmeh\r\n1_3\t-1.5\tDull.\r\n";
        let r = parse_snippets(text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["label"], "1");
        assert_eq!(r[1]["label"], "0");
        assert_eq!(r[1]["sentence"], "Dull.");
    }
}
