"""Word-level tokenizers (and tokenizer_config.json with a chat template for the LLaMA ones) for the
tiny fixture models, so `tpv eval` can run on them: token `wN` is id N.

    python3 tests/reference/tiny_tokenizers.py      # no dependencies
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models"


def added(words):
    return [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, w in enumerate(words[:3])]


def tokenizer(words, unk, post):
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added(words),
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": post,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": unk},
    }


def seq(x):
    return {"Sequence": {"id": x, "type_id": 0}}


def special(x):
    return {"SpecialToken": {"id": x, "type_id": 0}}


# T5 numbering: pad 0, eos 1; the tokenizer appends </s>.
T5_WORDS = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(3, 64)]
T5 = tokenizer(T5_WORDS, "<unk>", {
    "type": "TemplateProcessing", "single": [seq("A"), special("</s>")],
    "pair": [seq("A"), special("</s>"), seq("B"), special("</s>")],
    "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
})
# LLaMA numbering: pad 0, bos 1, eos 2; the tokenizer prepends <s>.
LLAMA_WORDS = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 64)]
LLAMA = tokenizer(LLAMA_WORDS, "<pad>", {
    "type": "TemplateProcessing", "single": [special("<s>"), seq("A")], "pair": [special("<s>"), seq("A"), seq("B")],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
})
CHAT = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }} {{ m['content'] | trim }} {% endfor %}"
        "{% if add_generation_prompt %}w63 {% endif %}")

for name, tok, cfg in [
    ("t5_relu_tied", T5, {"eos_token": "</s>"}),
    ("t5_gated_untied", T5, {"eos_token": "</s>"}),
    ("llama_gqa_rope3", LLAMA, {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT}),
    ("llama_tied", LLAMA, {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT}),
] + [
    # The other decoder families' fixtures (tests/reference/family_fixtures.py) use LLaMA's ids.
    (name, LLAMA, {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT})
    for name in ["qwen2_bias", "qwen3_qknorm_tied", "mistral_window", "phi3_fused", "gemma2_softcap", "gemma3_text"]
]:
    (OUT / name / "tokenizer.json").write_text(json.dumps(tok))
    (OUT / name / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
