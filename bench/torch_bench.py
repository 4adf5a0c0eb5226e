"""The PyTorch + transformers + peft side of bench/compare.sh: the same work `tpv bench` times.

    python bench/torch_bench.py --model smollm2-shaped --device cpu --json

- training step: forward + backward w.r.t. the prompt (peft PromptTuning) + AdamW + clipping,
  timed as the difference between a long and a short run of steps, median over repeats;
- evaluation: `generate` of exactly --target-tokens greedy tokens for one batch;
- loading (for a model directory): `from_pretrained`.
Random weights of SmolLM2-135M's or T5-base's shape, or of a released model's config.json in
tests/fixtures/known_models (`qwen3-1.7b-shaped`, `gemma2-2b-shaped`; `--layers N` keeps the first
N layers, as `tpv bench --layers`), unless a directory is given. Dropout off (model.eval()), as in
`tpv bench`.
"""
import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaConfig,
                          LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
               max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
               hidden_act="silu", bos_token_id=1, eos_token_id=2)
LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                  max_position_embeddings=131072, rope_theta=500000.0,
                  rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192, rope_type="llama3"),
                  tie_word_embeddings=False, hidden_act="silu", bos_token_id=128000,
                  eos_token_id=[128001, 128008, 128009])
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
               tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


# `tpv bench`'s shapes of released models: their config.json, as tests/fixtures/known_models holds it.
KNOWN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "known_models"
SHAPED = {
    "qwen3-1.7b-shaped": KNOWN / "Qwen--Qwen3-1.7B",
    "gemma2-2b-shaped": KNOWN / "google--gemma-2-2b-it",
}


def shaped(name, layers):
    """A random model of a released model's config (its first `layers` layers)."""
    cfg = AutoConfig.from_pretrained(SHAPED[name])
    if layers:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:layers]
    return AutoModelForCausalLM.from_config(cfg)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-shaped")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--virtual-tokens", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--tokens", type=int)
    p.add_argument("--target-tokens", type=int, default=3)
    p.add_argument("--short", type=int, default=2)
    p.add_argument("--long", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--load-only", action="store_true")
    p.add_argument("--save", help="write the random model (and nothing else) to this directory")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout in the training steps (train mode); 0 = eval mode")
    p.add_argument("--json", action="store_true")
    p.add_argument("--layers", type=int, help="a named shape's first N layers")
    a = p.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    dev = torch.device("cuda:0" if a.device.startswith("cuda") else "cpu")
    torch.manual_seed(0)

    load_s = None
    t0 = time.perf_counter()
    # Named shapes are drawn where they run, in the bench dtype (an 8B model in f32 on the host
    # first would take minutes); --layers keeps the first N layers, as `tpv bench --layers`.
    layers = {"num_hidden_layers": a.layers} if a.layers else {}
    named = a.model in ("smollm2-shaped", "llama31-8b-shaped", "t5-base-shaped") or a.model in SHAPED
    if named:
        torch.set_default_dtype(dtype)
    with torch.device(dev) if named else contextlib.nullcontext():
        if a.model == "smollm2-shaped":
            model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, **layers}))
        elif a.model == "llama31-8b-shaped":
            model = LlamaForCausalLM(LlamaConfig(**{**LLAMA31_8B, **layers}))
        elif a.model == "t5-base-shaped":
            t5_layers = {"num_layers": a.layers, "num_decoder_layers": a.layers} if a.layers else {}
            model = T5ForConditionalGeneration(T5Config(**{**T5_BASE, **t5_layers}))
        elif a.model in SHAPED:
            model = shaped(a.model, a.layers)
    if named:
        torch.set_default_dtype(torch.float32)
    else:
        cfg = AutoConfig.from_pretrained(a.model)
        cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
        model = cls.from_pretrained(a.model, torch_dtype=dtype)
        load_s = time.perf_counter() - t0
    if a.save:
        model.save_pretrained(a.save)
        return
    model = model.to(dev, dtype)
    if a.load_only:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        load_s = time.perf_counter() - t0
        res = dict(tool="torch+peft", model=a.model, device=a.device, dtype=a.dtype, load_s=load_s)
        print(json.dumps(res, indent=2) if a.json else f"{a.model}: loaded in {load_s:.3f} s")
        return
    seq2seq = model.config.is_encoder_decoder
    r = a.virtual_tokens or (50 if seq2seq else 100)
    b = a.batch or (8 if seq2seq else 4)
    n = a.tokens or (256 if seq2seq else 64)
    t = a.target_tokens
    vocab = model.config.vocab_size
    task = TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM
    model = get_peft_model(model, PromptTuningConfig(task_type=task, num_virtual_tokens=r))
    model.eval()  # dropout off; gradients still flow to the prompt
    if a.dropout > 0:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = a.dropout
        model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (b, n), generator=g).to(dev)
    mask = torch.ones_like(ids)
    labels = torch.randint(3, vocab, (b, t), generator=g).to(dev) if seq2seq else ids
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)

    def steps(k):
        start = time.perf_counter()
        for _ in range(k):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # host sync, as tpv reads the loss every step
        return time.perf_counter() - start

    steps(1)
    per_step = []
    for _ in range(a.repeats):
        s, l = steps(a.short), steps(a.long)
        per_step.append((l - s) / (a.long - a.short))
    step_s = statistics.median(per_step)

    model.eval()

    def gen():
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=t,
                                 min_new_tokens=t, do_sample=False, num_beams=1)
        out.cpu()
        return time.perf_counter() - start

    gen()
    eval_s = statistics.median(gen() for _ in range(a.repeats))
    res = dict(tool="torch+peft", torch=torch.__version__, model=a.model, device=a.device,
               dtype=a.dtype, threads=torch.get_num_threads(), virtual_tokens=r, batch=b, tokens=n,
               target_tokens=t, step_s=step_s, eval_batch_s=eval_s,
               eval_examples_per_s=b / eval_s, load_s=load_s)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"torch+peft {a.model} ({a.device}, {a.dtype}) R={r} batch {b}x{n}: "
              f"{step_s:.4f} s/step; greedy {t} tokens for the batch {eval_s:.4f} s")


if __name__ == "__main__":
    main()
