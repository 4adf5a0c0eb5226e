//! Chat templates are untrusted input (they come with a hub model): they render within
//! `text::CHAT_TEMPLATE_FUEL` instructions and an output cap, and the real ones stay far inside both.
//! The SmolLM2 GGUF's template is measured in `smollm2.rs`; the fuzz target here renders random
//! templates built from Jinja's loop, string and filter pieces. Not covered: a template that
//! doubles a string a few dozen times (`{% set ns.s = ns.s ~ ns.s %}` in a loop) grows
//! exponentially within the fuel; minijinja offers no cap on concatenation.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests read files and time themselves (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use tpv_shared::text::{self, CHAT_TEMPLATE_FUEL, TextCodec, render_chat, render_chat_measured};

fn fixture_template(model: &str) -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/models/{model}/tokenizer_config.json"));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg["chat_template"].as_str().unwrap().to_owned()
}

/// A template in the shape of today's chat templates (a system turn found by a loop over the
/// messages in reverse with a namespace, tool declarations, per-message role dispatch, string
/// methods), heavier than any of the fixtures' and written for this test.
const HEAVY_TEMPLATE: &str = r#"
{%- set ns = namespace(system=none, last_user=-1, count=0) -%}
{%- for m in messages[::-1] -%}
  {%- set index = (messages|length - 1) - loop.index0 -%}
  {%- if ns.last_user < 0 and m.role == 'user' -%}{%- set ns.last_user = index -%}{%- endif -%}
  {%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endif -%}
{%- endfor -%}
{{- bos_token -}}
{%- if ns.system is not none -%}
<|im_start|>system
{{ ns.system | trim }}{% for tool in ['search', 'calculator', 'weather', 'translate'] %}
# Tool {{ loop.index }}: {{ tool | upper }}{% endfor %}<|im_end|>
{% endif -%}
{%- for m in messages -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- if m.role == 'user' -%}
<|im_start|>user
{{ m.content.strip() }}{% if loop.index0 == ns.last_user %} [last]{% endif %}<|im_end|>
  {% elif m.role == 'assistant' -%}
<|im_start|>assistant
{{ m.content.split('</think>')[-1].lstrip('\n') }}<|im_end|>
  {% elif m.role != 'system' -%}
{{ raise_exception('unknown role ' ~ m.role) }}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}
"#;

fn messages() -> Vec<(&'static str, &'static str)> {
    vec![
        ("system", "You are a helpful assistant."),
        (
            "user",
            "Is this review positive or negative? The film drags in its second hour.",
        ),
    ]
}

#[test]
fn real_templates_render_far_inside_the_fuel_and_output_limits() {
    for model in ["llama_tied", "llama_gqa_rope3"] {
        let (text, used) =
            render_chat_measured(&fixture_template(model), &messages(), true, Some("<s>"), None).unwrap();
        assert!(text.contains("film drags"), "{model}: {text}");
        assert!(
            used > 0 && used * 50 < CHAT_TEMPLATE_FUEL,
            "{model} used {used} of {CHAT_TEMPLATE_FUEL}"
        );
    }
    let (text, used) = render_chat_measured(HEAVY_TEMPLATE, &messages(), true, Some("<s>"), None).unwrap();
    assert!(
        text.contains("# Tool 4: TRANSLATE") && text.ends_with("<|im_start|>assistant\n"),
        "{text}"
    );
    assert!(
        used * 50 < CHAT_TEMPLATE_FUEL,
        "the heavy template used {used} of {CHAT_TEMPLATE_FUEL}"
    );
    // A long conversation of 200 turns still fits.
    let long: Vec<(&str, &str)> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                ("user", "a question")
            } else {
                ("assistant", "an answer")
            }
        })
        .collect();
    let (_, used) = render_chat_measured(HEAVY_TEMPLATE, &long, true, None, None).unwrap();
    assert!(used < CHAT_TEMPLATE_FUEL, "200 turns used {used}");
}

#[test]
fn a_template_that_loops_without_end_stops_with_an_error_naming_the_file() {
    // Before the fuel limit this ran 10^10 iterations (hours; `tpv eval` hung).
    let template = "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
    let start = Instant::now();
    let err = render_chat(template, &messages(), true, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("more than {CHAT_TEMPLATE_FUEL} instructions")),
        "{err}"
    );
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());

    // Through the codec the error names where the template came from.
    let tokenizer =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_tied/tokenizer.json"))
            .unwrap();
    let config = serde_json::json!({ "chat_template": template }).to_string();
    let codec = TextCodec::from_hf(&tokenizer, Some(&config)).unwrap();
    let err = codec.chat("hello", true).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("instructions"),
        "{err}"
    );
}

#[test]
fn a_template_that_writes_gigabytes_stops_at_the_output_cap() {
    // 100 KB written 100,000 times (10 GB; before the cap this allocated until the process aborted).
    let template = "{% set s = 'x' * 100000 %}{% for i in range(100000) %}{{ s }}{% endfor %}";
    let err = render_chat(template, &messages(), true, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("grew past"), "{err}");
    // A single repetition beyond minijinja's own 100 MB cap is refused too.
    let err = render_chat("{{ 'x' * 1000000000 }}", &messages(), true, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
    // And an oversized template is refused before it is parsed.
    let huge = "x".repeat(text::CHAT_TEMPLATE_MAX_BYTES + 1);
    assert!(render_chat(&huge, &messages(), true, None, None).is_err());
}

/// Leaves of a template: output, string growth, filters, methods, errors.
fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{{ messages[0].content * 1000 }}".to_owned()),
        Just("{{ (messages | tojson) * 100 }}".to_owned()),
        // Linear growth only: a template that doubles a string in a loop (`ns.s ~ ns.s`) is
        // bounded by neither limit (minijinja caps `*` at 100 MB but not `~`); see the header.
        Just("{% set ns.s = ns.s ~ 'ab' %}".to_owned()),
        Just("{{ ns.s | length }}".to_owned()),
        Just("{{ messages[-1].content.split(' ') | join('--') }}".to_owned()),
        Just("{{ raise_exception('no') }}".to_owned()),
        Just("{{ bos_token }}{{ m }}".to_owned()),
        "[a-z<>| ]{0,12}",
    ]
}

/// Well-formed templates: leaves inside nested loops (up to 1,000 iterations each) and ifs, so
/// that most render or run out of fuel rather than fail to parse.
fn template() -> impl Strategy<Value = String> {
    let body = leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4)
                .prop_map(|b| format!("{{% for i in range(1000) %}}{}{{% endfor %}}", b.concat())),
            prop::collection::vec(inner.clone(), 1..4)
                .prop_map(|b| format!("{{% for m in messages %}}{}{{% endfor %}}", b.concat())),
            prop::collection::vec(inner, 1..4)
                .prop_map(|b| format!("{{% if add_generation_prompt %}}{}{{% endif %}}", b.concat())),
        ]
    });
    prop::collection::vec(body, 1..4).prop_map(|b| format!("{{% set ns = namespace(s='ab') %}}{}", b.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any template renders or fails with an error, without a panic, within the limits.
    #[test]
    fn random_templates_render_or_fail_within_the_limits(template in template()) {
        let content_bytes: usize = messages().iter().map(|(r, c)| r.len() + c.len()).sum();
        match render_chat(&template, &messages(), true, Some("<s>"), Some("</s>")) {
            Ok(text) => prop_assert!(text.len() <= text::CHAT_OUTPUT_BASE_BYTES + 4 * content_bytes),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
