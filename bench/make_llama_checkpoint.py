#!/usr/bin/env python3
"""Writes a LLaMA-shaped model folder with random f32 or bf16 weights (no torch: numpy and the
safetensors layout by hand), for measuring loading memory (docs/numbers.md):

    python3 bench/make_llama_checkpoint.py OUT_DIR [--hidden 2048 --layers 8 --ff 5632 --vocab 32000]
    # LLaMA-3.1-8B's shape, bf16 (16 GB):
    python3 bench/make_llama_checkpoint.py OUT_DIR --hidden 4096 --layers 32 --ff 14336 \
        --vocab 128256 --heads 32 --kv-heads 8 --untied --bf16

The tokenizer is the tiny fixture's (tests/fixtures/models/llama_tied); the model's vocabulary is
larger than the tokenizer's, which loading and one greedy token do not mind.
"""
import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--hidden", type=int, default=2048)
ap.add_argument("--layers", type=int, default=8)
ap.add_argument("--ff", type=int, default=5632)
ap.add_argument("--vocab", type=int, default=32000)
ap.add_argument("--heads", type=int, default=16)
ap.add_argument("--kv-heads", type=int, default=4)
ap.add_argument("--untied", action="store_true", help="a separate lm_head.weight")
ap.add_argument("--bf16", action="store_true", help="bf16 weights (f32 rounded toward zero)")
a = ap.parse_args()
root = Path(__file__).resolve().parent.parent
fixture = root / "tests/fixtures/models/llama_tied"
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(fixture / f, out / f)
d, heads, kv_heads = a.hidden, a.heads, a.kv_heads
head_dim = d // heads
cfg = json.loads((fixture / "config.json").read_text())
cfg.update(hidden_size=d, num_hidden_layers=a.layers, intermediate_size=a.ff, vocab_size=a.vocab,
           num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
           tie_word_embeddings=not a.untied, max_position_embeddings=2048)
(out / "config.json").write_text(json.dumps(cfg, indent=1))
kv = kv_heads * head_dim
shapes = {"model.embed_tokens.weight": (a.vocab, d), "model.norm.weight": (d,)}
if a.untied:
    shapes["lm_head.weight"] = (a.vocab, d)
width, dtype = (2, "BF16") if a.bf16 else (4, "F32")


def raw(x):
    """The bytes of float32 array x in the output dtype (bf16: the top half of each f32)."""
    return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes() if a.bf16 else x.tobytes()


for i in range(a.layers):
    p = f"model.layers.{i}."
    shapes.update({
        p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
        p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
        p + "mlp.gate_proj.weight": (a.ff, d), p + "mlp.up_proj.weight": (a.ff, d),
        p + "mlp.down_proj.weight": (d, a.ff),
        p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
    })
rng = np.random.default_rng(0)
header, offset = {}, 0
for name in sorted(shapes):
    n = int(np.prod(shapes[name])) * width
    header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
    offset += n
head = json.dumps(header).encode()
head += b" " * ((8 - len(head) % 8) % 8)
with open(out / "model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for name in sorted(shapes):
        if name.endswith("norm.weight"):
            f.write(raw(np.ones(shapes[name], dtype=np.float32)))
        else:
            f.write(raw(rng.standard_normal(shapes[name], dtype=np.float32) * np.float32(0.02)))
print(f"{out}: {offset / width / 1e6:.0f} M parameters, {offset / 1e9:.2f} GB")
