//! Run files and peft adapters: committed samples re-read, peft fixtures round-tripped, hostile
//! files refused without panicking.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tpv_shared::peft::{PeftAdapter, PeftConfig};
use tpv_shared::similarity::{Labelled, Measure, across_origins};
use tpv_shared::{Document, Error, FileKind, PromptKind, SoftPrompt, TaskType, runfile};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(fixtures().join(path)).unwrap()
}

fn sample(name: &str) -> SoftPrompt {
    runfile::read_run(&read(format!("runs/v1/{name}.safetensors"))).unwrap()
}

/// A safetensors buffer with a hand-written header.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn run_header(meta: &str, version: &str, tensors: &str) -> String {
    let meta = serde_json::to_string(meta).unwrap();
    format!(r#"{{"__metadata__":{{"format":"tpv-run","format_version":"{version}","tpv":{meta}}},{tensors}}}"#)
}

const META_2X2: &str = r#"{"kind":"origin","virtual_tokens":2,"token_dim":2,"dtype":"F32","tool_version":"0.1.0","created_at":"2026-11-25T00:00:00Z"}"#;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------- committed samples (format v1)

#[test]
fn v1_samples_still_open() {
    let p = sample("sst2-origin1");
    assert_eq!(p.kind(), PromptKind::TaskPrompt);
    assert_eq!(p.label(), "sst2@origin1");
    assert_eq!(p.shape(), [4, 8]);
    // Values printed by Python when the samples were made:
    // safe_open('tests/fixtures/runs/v1/sst2-origin1.safetensors','np').get_tensor('prompt')[0,:3]
    assert_eq!(&p.values.as_slice()[..3], &[-1.4425956, 0.7272344, -0.899_807_63]);
    assert_eq!(p.curves["train_loss"].values, [2.0, 1.25, 0.76]);
    assert_eq!(p.meta.metrics["test_accuracy"], 0.9 - 0.05);
    assert_eq!(p.meta.model.as_ref().unwrap().id, "tpv-sample-8d");
    assert_eq!(p.meta.layout.task_type, Some(TaskType::CausalLm));
    let o = sample("origin1");
    assert_eq!(o.kind(), PromptKind::Origin);
    assert_eq!(o.meta.origin.as_ref().unwrap().seed, Some(1024));
    assert_eq!(p.origin.as_ref(), Some(&o.values));
    // Re-reading what we write gives the same prompt.
    assert_eq!(runfile::read_run(&runfile::write_run(&p).unwrap()).unwrap(), p);
}

#[test]
fn v1_samples_show_the_papers_pattern() {
    let mut prompts = Vec::new();
    for task in ["sst2", "mnli"] {
        for o in 0..3 {
            prompts.push(sample(&format!("{task}-origin{o}")));
        }
    }
    let vectors: Vec<_> = prompts.iter().map(|p| p.vector_values().unwrap()).collect();
    let items: Vec<Labelled<'_>> = prompts
        .iter()
        .zip(&vectors)
        .map(|(p, v)| Labelled {
            task: p.meta.tasks[0].clone(),
            origin: p.origin_id().unwrap().into(),
            values: v,
        })
        .collect();
    let view = across_origins(&items, Measure::CosineMean).unwrap();
    let m: Vec<f64> = view.matrix.iter().flatten().map(|x| x.unwrap()).collect();
    // Same task across origins: high; different tasks: low.
    assert!(m[0] > 0.9 && m[3] > 0.9, "{m:?}");
    assert!(m[1].abs() < 0.6, "{m:?}");
}

#[test]
fn newer_format_versions_are_refused_naming_both() {
    let bytes = raw(
        &run_header(
            META_2X2,
            "3",
            r#""prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#,
        ),
        &f32_bytes(&[1.0; 4]),
    );
    let err = runfile::read_run(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NewerFormat {
                file: 3,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("version 3") && msg.contains("up to 2"), "{msg}");
}

// ---------------------------------------------------------------- peft interop

#[test]
fn peft_seq2seq_uses_the_first_block_only_and_round_trips() {
    let dir = fixtures().join("peft/t5_seq2seq");
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let adapter = PeftAdapter::from_parts(Some(&config), &weights).unwrap();
    assert_eq!(adapter.embeddings.shape(), [8, 16]);
    assert_eq!(adapter.config.task_type(), Some(TaskType::Seq2SeqLm));
    let prompt = adapter.to_prompt(PromptKind::TaskPrompt, None).unwrap();
    assert_eq!(prompt.shape(), [4, 16]);
    assert_eq!(prompt.values.as_slice(), &adapter.embeddings.as_slice()[..64]);
    assert_eq!(prompt.meta.model.as_ref().unwrap().id, "tpv-tiny-t5");
    assert_eq!(prompt.meta.layout.num_transformer_submodules, 2);

    // Through a run file and back to peft.
    let back = runfile::read_run(&runfile::write_run(&prompt).unwrap()).unwrap();
    let exported = PeftAdapter::from_prompt(&back).unwrap();
    let (json, bytes) = exported.to_files().unwrap();
    let reread = PeftAdapter::from_parts(Some(&json), &bytes).unwrap();
    assert_eq!(reread.embeddings.shape(), [8, 16]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&reread.embeddings.as_slice()[..64]),
        bits(&adapter.embeddings.as_slice()[..64])
    );
    assert!(reread.embeddings.as_slice()[64..].iter().all(|&x| x == 0.0));
    // Keys tpv does not know are written back unchanged.
    let out: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(out["peft_version"], "0.21.2");
    assert_eq!(out["num_attention_heads"], 4);
    assert_eq!(out["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!(out["num_transformer_submodules"], 2);
}

#[test]
fn peft_causal_and_bf16_adapters_read() {
    for (name, dtype) in [("llama_causal", "F32"), ("llama_causal_bf16", "BF16")] {
        let dir = fixtures().join("peft").join(name);
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        let doc = Document::read(&weights, Some(&config)).unwrap();
        let adapter = doc.peft.as_ref().unwrap();
        assert_eq!(adapter.dtype, dtype);
        assert_eq!(doc.prompt.shape(), [4, 16]);
        assert_eq!(doc.prompt.meta.layout.task_type, Some(TaskType::CausalLm));
        assert_eq!(doc.prompt.meta.dtype, dtype);
        let exported = PeftAdapter::from_prompt(&doc.prompt).unwrap();
        assert_eq!(exported.embeddings, adapter.embeddings);
    }
    // bf16 values widen exactly: every f32 has the low 16 bits clear.
    let weights = read("peft/llama_causal_bf16/adapter_model.safetensors");
    let doc = Document::read(&weights, None).unwrap();
    assert!(doc.prompt.values.as_slice().iter().all(|x| x.to_bits() & 0xffff == 0));
}

#[test]
fn peft_import_with_origin_derives_the_vector() {
    let weights = read("peft/llama_causal/adapter_model.safetensors");
    let config = String::from_utf8(read("peft/llama_causal/adapter_config.json")).unwrap();
    let adapter = PeftAdapter::from_parts(Some(&config), &weights).unwrap();
    let origin = adapter.to_prompt(PromptKind::Origin, None).unwrap();
    let task = adapter.to_prompt(PromptKind::TaskPrompt, Some(&origin)).unwrap();
    assert!(task.vector_values().unwrap().as_slice().iter().all(|&x| x == 0.0));
}

#[test]
fn peft_configs_are_checked_and_unknown_keys_tolerated() {
    let weights = read("peft/llama_causal/adapter_model.safetensors");
    let mut config: serde_json::Value = serde_json::from_slice(&read("peft/llama_causal/adapter_config.json")).unwrap();
    config["a_key_from_peft_1_0"] = serde_json::json!({"nested": [1, 2]});
    assert!(PeftAdapter::from_parts(Some(&config.to_string()), &weights).is_ok());
    let parsed = PeftConfig::parse(&config.to_string()).unwrap();
    assert!(parsed.extra.contains_key("a_key_from_peft_1_0"));

    let mut lora = config.clone();
    lora["peft_type"] = "LORA".into();
    assert!(matches!(
        PeftAdapter::from_parts(Some(&lora.to_string()), &weights),
        Err(Error::NotPromptTuning(_))
    ));
    let mut wrong = config.clone();
    wrong["num_virtual_tokens"] = 3.into();
    assert!(matches!(
        PeftAdapter::from_parts(Some(&wrong.to_string()), &weights),
        Err(Error::PeftShape { .. })
    ));
    let mut wrong_dim = config.clone();
    wrong_dim["token_dim"] = 32.into();
    assert!(matches!(
        PeftAdapter::from_parts(Some(&wrong_dim.to_string()), &weights),
        Err(Error::PeftShape { .. })
    ));
    let mut overflow = config;
    overflow["num_virtual_tokens"] = serde_json::json!(u64::MAX);
    overflow["num_transformer_submodules"] = 2.into();
    assert!(PeftAdapter::from_parts(Some(&overflow.to_string()), &weights).is_err());
    assert!(matches!(
        PeftAdapter::from_parts(Some("{not json"), &weights),
        Err(Error::PeftConfig(_))
    ));
    assert!(matches!(
        PeftAdapter::from_parts(Some("{}"), &weights),
        Err(Error::PeftConfig(_))
    ));
}

#[test]
fn sniff_tells_the_formats_apart() {
    assert_eq!(
        runfile::sniff(&read("runs/v1/origin0.safetensors")).unwrap(),
        FileKind::Run
    );
    assert_eq!(
        runfile::sniff(&read("peft/t5_seq2seq/adapter_model.safetensors")).unwrap(),
        FileKind::PeftWeights
    );
    let other = raw(
        r#"{"weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let err = runfile::sniff(&other).unwrap_err();
    assert!(err.to_string().contains("weight"), "{err}");
}

// ---------------------------------------------------------------- hostile files

#[test]
#[allow(clippy::too_many_lines, reason = "a table of crafted files, one case after another")]
fn hostile_files_give_errors() {
    let ok_tensor = r#""prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#;
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    // The well-formed file these are variations of.
    assert!(runfile::read_run(&raw(&run_header(META_2X2, "1", ok_tensor), &data)).is_ok());

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("huge header length", {
            let mut b = u64::MAX.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header length past the end", {
            let mut b = 1_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header not JSON", raw("{\"__metadata__\": nope", &data)),
        (
            "offsets out of range",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1600000]}"#,
                ),
                &data,
            ),
        ),
        (
            "offsets disagree with shape",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}"#,
                ),
                &data[..8],
            ),
        ),
        (
            "shape overflows",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""prompt":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}"#,
                ),
                &data,
            ),
        ),
        (
            "truncated data",
            raw(&run_header(META_2X2, "1", ok_tensor), &data[..10]),
        ),
        (
            "wrong dtype",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""prompt":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}"#,
                ),
                &data,
            ),
        ),
        (
            "three dimensions",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""prompt":{"dtype":"F32","shape":[1,2,2],"data_offsets":[0,16]}"#,
                ),
                &data,
            ),
        ),
        (
            "NaN",
            raw(
                &run_header(META_2X2, "1", ok_tensor),
                &f32_bytes(&[1.0, f32::NAN, 3.0, f32::INFINITY]),
            ),
        ),
        (
            "missing prompt",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""other":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#,
                ),
                &data,
            ),
        ),
        ("metadata not JSON", raw(&run_header("{oops", "1", ok_tensor), &data)),
        (
            "metadata missing a field",
            raw(&run_header(r#"{"kind":"origin"}"#, "1", ok_tensor), &data),
        ),
        (
            "unknown kind",
            raw(
                &run_header(&META_2X2.replace("origin", "banana"), "1", ok_tensor),
                &data,
            ),
        ),
        (
            "metadata shape disagrees",
            raw(
                &run_header(
                    &META_2X2.replace("\"virtual_tokens\":2", "\"virtual_tokens\":3"),
                    "1",
                    ok_tensor,
                ),
                &data,
            ),
        ),
        (
            "version not a number",
            raw(&run_header(META_2X2, "one", ok_tensor), &data),
        ),
        ("version zero", raw(&run_header(META_2X2, "0", ok_tensor), &data)),
        (
            "origin of another shape",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""origin":{"dtype":"F32","shape":[1,2],"data_offsets":[16,24]},"prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#,
                ),
                &[data.clone(), f32_bytes(&[0.0, 0.0])].concat(),
            ),
        ),
        (
            "curve of the wrong width",
            raw(
                &run_header(
                    META_2X2,
                    "1",
                    r#""curve.loss":{"dtype":"F32","shape":[1,3],"data_offsets":[16,28]},"prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#,
                ),
                &[data.clone(), f32_bytes(&[0.0; 3])].concat(),
            ),
        ),
    ];
    // Every prefix of a valid file.
    let valid = read("runs/v1/sst2-origin0.safetensors");
    for cut in [0, 1, 8, 9, 100, valid.len() / 2, valid.len() - 1] {
        cases.push(("truncated sample", valid[..cut].to_vec()));
    }
    for (name, bytes) in cases {
        let run = runfile::read_run(&bytes);
        assert!(run.is_err(), "{name}: accepted");
        let doc = Document::read(&bytes, None);
        assert!(doc.is_err(), "{name}: accepted as a document");
        let msg = run.unwrap_err().to_string();
        assert!(!msg.is_empty(), "{name}");
    }
    // NaN is named as such.
    let nan = raw(
        &run_header(META_2X2, "1", ok_tensor),
        &f32_bytes(&[1.0, f32::NAN, 3.0, f32::INFINITY]),
    );
    assert!(matches!(
        runfile::read_run(&nan),
        Err(Error::NonFinite { count: 2, first: 1, .. })
    ));
    // peft weights with NaN or the wrong dtype.
    let peft_nan = raw(
        r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        &f32_bytes(&[f32::NAN; 4]),
    );
    assert!(matches!(
        PeftAdapter::from_parts(None, &peft_nan),
        Err(Error::NonFinite { .. })
    ));
    let peft_int = raw(
        r#"{"prompt_embeddings":{"dtype":"I64","shape":[2,1],"data_offsets":[0,16]}}"#,
        &data,
    );
    assert!(matches!(
        PeftAdapter::from_parts(None, &peft_int),
        Err(Error::WrongDtype { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = runfile::read_run(&bytes);
        let _ = Document::read(&bytes, None);
    }

    #[test]
    fn corrupted_samples_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = read("runs/v1/mnli-origin2.safetensors");
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = runfile::read_run(&bytes);
        let _ = Document::read(&bytes, Some("{\"peft_type\":\"PROMPT_TUNING\",\"num_virtual_tokens\":4}"));
    }
}

// ---------------------------------------------------------------- numbers that size allocations

/// Issue 15 (1): `layout.num_transformer_submodules` sizes a peft export (rows × submodules): a
/// crafted value is refused when the file is read, so no command exports it (2^62 used to write
/// an adapter nobody could load, u64::MAX panicked, 10^12 aborted on a 16 TB allocation, 10^7
/// wrote 160 MB).
#[test]
fn layout_submodule_counts_peft_does_not_use_are_refused() {
    let ok_tensor = r#""prompt":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#;
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let with_layout = |layout: &str| {
        let meta = META_2X2.replace('}', &format!(r#","layout":{layout}}}"#));
        raw(&run_header(&meta, "1", ok_tensor), &data)
    };
    for ok in [
        r#"{"num_transformer_submodules":1}"#,
        r#"{"num_transformer_submodules":2}"#,
        r#"{"task_type":"CAUSAL_LM","num_transformer_submodules":1}"#,
        r#"{"task_type":"SEQ_2_SEQ_LM","num_transformer_submodules":2}"#,
        // peft accepts an explicit count that is not the task type's default.
        r#"{"task_type":"SEQ_2_SEQ_LM","num_transformer_submodules":1}"#,
        r#"{"task_type":"CAUSAL_LM","num_transformer_submodules":2}"#,
    ] {
        let p = runfile::read_run(&with_layout(ok)).unwrap();
        assert!(PeftAdapter::from_prompt(&p).is_ok(), "{ok}");
    }
    for n in [
        "0".to_owned(),
        "3".to_owned(),
        "10000000".to_owned(),
        "1000000000000".to_owned(),
        (1u64 << 62).to_string(),
        (1u64 << 63).to_string(),
        u64::MAX.to_string(),
    ] {
        let err = runfile::read_run(&with_layout(&format!(r#"{{"num_transformer_submodules":{n}}}"#))).unwrap_err();
        assert!(err.to_string().contains("num_transformer_submodules"), "{n}: {err}");
    }
    // The same rule for a peft config.
    let weights = read("peft/llama_causal/adapter_model.safetensors");
    let mut config: serde_json::Value = serde_json::from_slice(&read("peft/llama_causal/adapter_config.json")).unwrap();
    config["num_transformer_submodules"] = serde_json::json!(1u64 << 62);
    assert!(matches!(
        PeftAdapter::from_parts(Some(&config.to_string()), &weights),
        Err(Error::PeftConfig(_))
    ));
}

/// Issue 15 (11): a 0×d or R×0 prompt was accepted and exported to an adapter tpv then refused.
#[test]
fn zero_size_prompts_are_refused() {
    for (shape, meta) in [
        (
            "[0,2]",
            META_2X2.replace(r#""virtual_tokens":2"#, r#""virtual_tokens":0"#),
        ),
        ("[2,0]", META_2X2.replace(r#""token_dim":2"#, r#""token_dim":0"#)),
    ] {
        let tensor = format!(r#""prompt":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}"#);
        let err = runfile::read_run(&raw(&run_header(&meta, "1", &tensor), &[])).unwrap_err();
        assert!(err.to_string().contains("at least one row"), "{shape}: {err}");
    }
}

/// Issue 15 (11): a 99 MB file of 1.45 M empty tensors took 31 s and 1.56 GB to parse; headers
/// over 4 MiB and more than 4,096 tensors are refused (the first before any JSON is read).
#[test]
fn huge_headers_and_tensor_counts_are_refused_quickly() {
    let many = |n: usize| {
        let entries: Vec<String> = (0..n)
            .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#))
            .collect();
        raw(&run_header(META_2X2, "1", &entries.join(",")), &[])
    };
    let t = std::time::Instant::now();
    let err = runfile::read_run(&many(100_000)).unwrap_err().to_string();
    assert!(err.contains("header of"), "{err}");
    let err = runfile::read_run(&many(5_000)).unwrap_err().to_string();
    assert!(err.contains("5000 tensors"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
}
