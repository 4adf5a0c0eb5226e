//! Rank classification, batches that mix prompts, and prefixes computed once per prompt, against
//! the per-example computations they replace (which `models.rs` checks against HF transformers):
//! the same losses to 1e-5 and the same predictions, on the tiny fixture models of both families.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tpv_shared::eval::{EncodeOptions, Encoded, Loaded, Scoring};
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::Model;
use tpv_shared::model::t5;
use tpv_shared::model::{DType, Device, Tensor, Var};
use tpv_shared::tasks::{LabelKind, Origin, Record, TaskSpec};

#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::{MODELS, decoders};

/// The model as its family's own type: a decoder-only model, or T5.
fn decoder_or_t5(model: &Model) -> (Option<&Decoder>, Option<&t5::T5>) {
    (model.downcast_ref(), model.downcast_ref())
}

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn load(name: &str) -> Loaded {
    let mut files = BTreeMap::new();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        if let Ok(bytes) = std::fs::read(dir(name).join(f)) {
            files.insert(f.to_owned(), bytes);
        }
    }
    Loaded::from_files(&files, DType::F32, &Device::Cpu).unwrap()
}

/// A task with a closed label set of one- and two-word labels (words `wN` are token N).
fn task() -> TaskSpec {
    TaskSpec {
        name: "toy".into(),
        template: "w20 w21 {text}".into(),
        instruction: "w10 w11 w12 w13 w14".into(),
        fields: vec![("w15".into(), "text".into())],
        label_column: "label".into(),
        labels: vec!["w5".into(), "w7 w8".into(), "w9".into()],
        label_kind: LabelKind::Class,
        metrics: Vec::new(),
        origin: Origin::default(),
    }
}

fn records() -> Vec<Record> {
    let texts = [
        "w30 w31 w32",
        "w40",
        "w33 w34 w35 w36 w37 w38",
        "w41 w42",
        "w50 w51 w52 w53",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Record::from([
                ("text".to_owned(), (*t).to_owned()),
                ("label".to_owned(), (i % 3).to_string()),
            ])
        })
        .collect()
}

fn random(rows: usize, d: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let v: Vec<f32> = (0..rows * d).map(|_| (rng.next_f64() as f32 - 0.5) * 2.0).collect();
    Tensor::from_vec(v, (rows, d), &Device::Cpu).unwrap()
}

fn prompts(loaded: &Loaded) -> Vec<Tensor> {
    let d = loaded.model.hidden_size();
    vec![random(3, d, 1), random(5, d, 2), random(0, d, 3)]
}

fn encode(loaded: &Loaded, rec: &Record) -> Encoded {
    loaded.encode(&task(), rec, &EncodeOptions::default()).unwrap()
}

#[track_caller]
/// d`loss`/d`var`, flattened.
fn gradient(loss: &Tensor, var: &Var) -> Vec<f32> {
    loss.backward()
        .unwrap()
        .get(var)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(a: f32, b: f32, what: &str) {
    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

#[test]
fn rank_scores_each_label_as_its_own_teacher_forced_loss() {
    for name in MODELS {
        let loaded = load(name);
        let task = task();
        let ps = prompts(&loaded);
        let recs = records();
        let encoded: Vec<Encoded> = recs.iter().map(|r| encode(&loaded, r)).collect();
        let scorer = loaded.scorer(&task, Scoring::Rank, 0, false).unwrap();
        // Every (prompt, example) pair in one batch: rows mix prompts, and rows of one prompt
        // share the chat template and instruction, computed once.
        let rows: Vec<(&Tensor, &Encoded)> = ps.iter().flat_map(|p| encoded.iter().map(move |e| (p, e))).collect();
        let got = loaded.evaluate_rows(&rows, &scorer).unwrap();
        for ((p, _), (r, rec)) in rows.iter().zip(got.iter().zip(recs.iter().cycle())) {
            // The reference: each label as the target of the example alone.
            let mut want = Vec::new();
            for l in 0..task.labels.len() {
                let mut rec = rec.clone();
                rec.insert("label".into(), l.to_string());
                let e = encode(&loaded, &rec);
                let (loss, count) = loaded.losses(p, &[&e]).unwrap();
                want.push(loss[0] * count[0] as f32);
            }
            for (g, w) in r.scores.iter().zip(&want) {
                close(*g, *w, &format!("{name}: label NLL"));
            }
            let best = (0..want.len()).fold(0, |b, j| if want[j] < want[b] { j } else { b });
            assert_eq!(r.prediction, task.labels[best], "{name}: prediction");
            let target: usize = rec["label"].parse().unwrap();
            let n = loaded.answer_ids(&task.labels[target]).unwrap().len();
            close(r.loss, want[target] / n as f32, &format!("{name}: loss of the target"));
            assert_eq!(r.tokens, n);
        }
    }
}

#[test]
fn a_batch_of_mixed_prompts_gives_each_prompt_alone_its_results() {
    for name in MODELS {
        let loaded = load(name);
        let task = task();
        let ps = prompts(&loaded);
        let encoded: Vec<Encoded> = records().iter().map(|r| encode(&loaded, r)).collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let scorer = loaded.scorer(&task, Scoring::Generate, 3, true).unwrap();
        let prs: Vec<&Tensor> = ps.iter().collect();
        let mut calls = 0;
        let got = loaded
            .evaluate_prompts(&prs, &refs, &scorer, 4, &mut |done, total| {
                calls += 1;
                assert!(done <= total);
            })
            .unwrap();
        assert_eq!(calls, (ps.len() * encoded.len()).div_ceil(4));
        for (p, per) in ps.iter().zip(&got) {
            for (e, r) in encoded.iter().zip(per) {
                let alone = loaded.evaluate_batch(p, &[e], 3).unwrap().remove(0);
                assert_eq!(r.prediction, alone.prediction, "{name}: prediction");
                close(r.loss, alone.loss, &format!("{name}: loss"));
                assert_eq!(r.tokens, alone.tokens);
            }
        }
    }
}

/// Evaluation's one pass (decoder-only, `causal::loss_and_greedy_rows`: each answer
/// teacher-forced after its input, the inputs' ends aligned, decoding continued from them; T5,
/// `t5::loss_and_greedy_rows`: one encoder pass for both) gives what the loss pass and the greedy
/// pass give separately: rows that mix prompts (0, 3 and 5 virtual tokens), input and answer
/// lengths, with a prefix shared per prompt.
#[test]
fn one_pass_gives_the_loss_and_the_greedy_continuation_of_two() {
    for name in MODELS {
        let loaded = load(name);
        let ps = prompts(&loaded);
        let encoded: Vec<Encoded> = records().iter().map(|r| encode(&loaded, r)).collect();
        let rows: Vec<(&Tensor, &Encoded)> = ps.iter().flat_map(|p| encoded.iter().map(move |e| (p, e))).collect();
        let prs: Vec<&Tensor> = rows.iter().map(|(p, _)| *p).collect();
        let batch: Vec<&Encoded> = rows.iter().map(|(_, e)| *e).collect();
        let (out, generated) = loaded.model.loss_and_greedy_rows(&prs, &batch, 4, &loaded.eos).unwrap();
        let whole = loaded.model.loss_rows(&prs, &batch, None).unwrap();
        close(
            out.loss.to_scalar::<f32>().unwrap(),
            whole.loss.to_scalar::<f32>().unwrap(),
            &format!("{name}: batch loss"),
        );
        for (i, (p, e)) in rows.iter().enumerate() {
            let (loss, count) = loaded.losses_rows(&[p], &[e]).unwrap();
            close(out.per_example().unwrap()[i], loss[0], &format!("{name}: row {i} loss"));
            assert_eq!(out.counts[i], count[0], "{name}: row {i} target count");
            let alone = loaded
                .model
                .greedy_rows(&[p], &[e.input().to_vec()], 4, &loaded.eos)
                .unwrap();
            assert_eq!(generated[i], alone[0], "{name}: row {i} greedy tokens");
        }
        assert!(
            generated.iter().any(|g| g.len() >= 2),
            "{name}: some row decodes past the prefill ({generated:?})"
        );
    }
}

#[test]
fn rank_over_every_token_picks_the_greedy_token() {
    for name in MODELS {
        let loaded = load(name);
        let ps = prompts(&loaded);
        let encoded: Vec<Encoded> = records().iter().map(|r| encode(&loaded, r)).collect();
        let vocab = loaded.model.embeddings().dim(0).unwrap() as u32;
        let candidates: Vec<Vec<u32>> = (0..vocab).map(|t| vec![t]).collect();
        for p in &ps {
            let inputs: Vec<&[u32]> = encoded.iter().map(|e| e.input()).collect();
            let prompts = vec![p; inputs.len()];
            let (scores, greedy): (Vec<Vec<f32>>, Vec<Vec<u32>>) = match decoder_or_t5(&loaded.model) {
                (Some(m), _) => {
                    let owned: Vec<Vec<u32>> = inputs.iter().map(|i| i.to_vec()).collect();
                    (
                        causal::rank(m, &prompts, &inputs, &candidates).unwrap(),
                        causal::greedy(m, p, &owned, 1, &[]).unwrap(),
                    )
                }
                (None, m) => {
                    let m = m.unwrap();
                    let owned: Vec<Vec<u32>> = inputs.iter().map(|i| i.to_vec()).collect();
                    let eos = m.cfg.eos_token_id.unwrap_or(1);
                    let g = t5::greedy(m, p, &owned, 1).unwrap();
                    (
                        t5::rank(m, &prompts, &inputs, &candidates).unwrap(),
                        g.into_iter()
                            .map(|t| if t.is_empty() { vec![eos] } else { t })
                            .collect(),
                    )
                }
            };
            for (s, g) in scores.iter().zip(&greedy) {
                let best = (0..s.len()).fold(0, |b, j| if s[j] < s[b] { j } else { b });
                assert_eq!(best as u32, g[0], "{name}: rank over all tokens vs greedy");
            }
        }
    }
}

#[test]
fn a_shared_prefix_gives_each_example_its_loss_and_gradient() {
    for name in decoders() {
        let loaded = load(name);
        let m = loaded.model.downcast_ref::<Decoder>().unwrap();
        let d = m.hidden_size();
        let var = Var::from_tensor(&random(3, d, 9)).unwrap();
        // Examples that share a long beginning (the chat template and the instruction).
        let examples: Vec<Example> = records()
            .iter()
            .map(|r| match encode(&loaded, r) {
                Encoded::Causal { example, .. } => example,
                Encoded::Seq2Seq { .. } => panic!(),
            })
            .collect();
        let batch = causal::loss(m, var.as_tensor(), &examples).unwrap();
        let g_batch = gradient(&batch.loss, &var);
        // Alone, each example shares nothing; the batch loss is the token-weighted mean.
        let total: usize = batch.counts.iter().sum();
        let mut g_want = vec![0f32; g_batch.len()];
        for (i, ex) in examples.iter().enumerate() {
            let alone = causal::loss(m, var.as_tensor(), std::slice::from_ref(ex)).unwrap();
            close(
                batch.per_example().unwrap()[i],
                alone.per_example().unwrap()[0],
                &format!("{name}: loss"),
            );
            let g = gradient(&alone.loss, &var);
            let w = alone.counts[0] as f32 / total as f32;
            for (a, b) in g_want.iter_mut().zip(g) {
                *a += w * b;
            }
        }
        for (a, b) in g_batch.iter().zip(&g_want) {
            assert!((a - b).abs() <= 1e-5, "{name}: gradient {a} vs {b}");
        }
        // Generation from the shared prefix equals full recomputation.
        let inputs: Vec<Vec<u32>> = records().iter().map(|r| encode(&loaded, r).input().to_vec()).collect();
        let cached = causal::greedy(m, var.as_tensor(), &inputs, 4, &loaded.eos).unwrap();
        for (input, got) in inputs.iter().zip(&cached) {
            let want = causal::greedy_recompute(m, var.as_tensor(), input, 4, &loaded.eos).unwrap();
            assert_eq!(got, &want, "{name}: greedy");
        }
    }
}

#[test]
fn rank_refuses_a_task_without_labels() {
    let loaded = load("llama_tied");
    let e = loaded
        .scorer(&tpv_shared::tasks::plain(), Scoring::Rank, 4, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label set"), "{e}");
}

/// Issue 15 (5): a prompt longer than the model's positions is refused with the reason by every
/// scoring path (loss, rank, generation) on both families, before anything is allocated for it.
#[test]
fn sequences_past_the_models_positions_are_refused_by_every_path() {
    for name in MODELS {
        let loaded = load(name);
        let max = loaded.model.max_positions();
        let long = random(max + 1, loaded.model.hidden_size(), 3);
        let task = task();
        let rec = &records()[0];
        let e = encode(&loaded, rec);
        let err = loaded.losses(&long, &[&e]).unwrap_err().to_string();
        assert!(err.contains("exceeds the model's"), "{name} loss: {err}");
        for scoring in [Scoring::Rank, Scoring::Generate] {
            let scorer = loaded.scorer(&task, scoring, 4, false).unwrap();
            let err = loaded.evaluate_rows(&[(&long, &e)], &scorer).unwrap_err().to_string();
            assert!(err.contains("exceeds the model's"), "{name} {scoring:?}: {err}");
        }
        // Generation that would run past the positions is refused before it starts.
        let fits = random(2, loaded.model.hidden_size(), 3);
        let scorer = loaded.scorer(&task, Scoring::Generate, max + 1, false).unwrap();
        let err = loaded.evaluate_rows(&[(&fits, &e)], &scorer).unwrap_err().to_string();
        assert!(err.contains("to generate"), "{name} generation past the end: {err}");
    }
}

/// Issue 32 (8): rank scoring's tree mask grew with the square of all labels' tokens (10,000
/// labels asked for 14.4 GB); `Model::rank` now scores them in groups of at most
/// `RANK_TOKENS_PER_PASS` tokens, with the scores of one pass over all of them.
#[test]
fn rank_in_groups_gives_the_scores_of_one_pass() {
    for name in MODELS {
        let loaded = load(name);
        let ps = prompts(&loaded);
        let encoded: Vec<Encoded> = records().iter().map(|r| encode(&loaded, r)).collect();
        // 700 two-token candidates: 1,400 tokens, three passes.
        let candidates: Vec<Vec<u32>> = (0..700u32).map(|i| vec![i % 64, (i / 64 + 3 * i) % 64]).collect();
        assert!(candidates.len() * 2 > 2 * tpv_shared::eval::RANK_TOKENS_PER_PASS);
        let inputs: Vec<&[u32]> = encoded.iter().map(|e| e.input()).collect();
        let prompts = vec![&ps[1]; inputs.len()];
        let grouped = loaded.model.rank(&prompts, &inputs, &candidates).unwrap();
        let one_pass = match decoder_or_t5(&loaded.model) {
            (Some(m), _) => causal::rank(m, &prompts, &inputs, &candidates).unwrap(),
            (None, m) => t5::rank(m.unwrap(), &prompts, &inputs, &candidates).unwrap(),
        };
        for (g, o) in grouped.iter().zip(&one_pass) {
            assert_eq!(g.len(), candidates.len());
            for (j, (a, b)) in g.iter().zip(o).enumerate() {
                close(*a, *b, &format!("{name}: candidate {j}"));
            }
        }
    }
}
