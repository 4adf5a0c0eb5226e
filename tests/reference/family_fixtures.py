"""Reference numbers for the soft-prompt forward passes of more decoder-only families, from HF transformers
+ peft on tiny random models. Writes tests/fixtures/models/NAME/{config.json, model.safetensors, expected.json}
in exactly the format of model_fixtures.py's llama fixtures (plus a top-level "versions" key).

    ~/.cache/tpv/refenv/bin/python tests/reference/family_fixtures.py

Versions: tests/reference/requirements.txt (torch 2.15.0, transformers 5.24.0, peft 0.21.2); nothing is
downloaded. All models: float32, eager attention, vocab 64, hidden 16, intermediate 32, 2 layers, 4 heads,
2 kv heads, bos 1 / eos 2 / pad 0; every >1-dim weight x8 and every 1-dim weight (bias, norm) random.
config.json is the hub-style (transformers 4.x layout) dict, and the model is built from that very dict.
- qwen2_bias:        Qwen2 (q/k/v biases, no o bias), untied head, rope_theta 1e4, use_sliding_window false
- qwen3_qknorm_tied: Qwen3, head_dim 8 != hidden/heads (q_proj 32x16), per-head q_norm/k_norm, tied head
- mistral_window:    Mistral with sliding_window 4 on every layer, untied
- phi3_fused:        Phi-3 fused qkv_proj and gate_up_proj, sliding_window 5, untied, no rope scaling
- gemma2_softcap:    Gemma-2: (1+w) norms, sandwich norms, sqrt(d) embedding scale, query_pre_attn_scalar 6,
                     attention softcap 5, final logit softcap 3, layer 0 sliding (window 4) / layer 1 full,
                     gelu_pytorch_tanh, tied (no tie_word_embeddings key, as on the hub)
- gemma3_text:       Gemma-3 text: Gemma-2 minus softcaps plus per-head q_norm/k_norm, layer 0 sliding
                     (window 4, rope theta 1e4) / layer 1 full (rope theta 1e6, linear scaling x2)
"""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PromptTuningConfig, TaskType, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from model_fixtures import NEW_TOKENS, OUT, R, flat, greedy, set_prompt  # noqa: E402

VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}

# Shared sizes, in the hub's key names.
COMMON = {
    "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "use_cache": True,
    "torch_dtype": "float32",
}

# The same examples as model_fixtures.llama_fixture.
EXAMPLES = [
    {"input_ids": [1, 5, 17, 33, 9], "answer_ids": [12, 7, 2]},
    {"input_ids": [1, 44, 3], "answer_ids": [30, 2]},
    {"input_ids": [1, 8, 8, 21, 60, 61, 62, 63, 4, 11, 40], "answer_ids": [2]},
]


def config_json_for(name):
    """The hub-style config.json of each fixture (the model is built from this dict)."""
    if name == "qwen2_bias":  # as Qwen2.5-0.5B's, untied
        return {
            **COMMON, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "use_sliding_window": False, "sliding_window": 64,
            "max_window_layers": 2, "tie_word_embeddings": False, "attention_dropout": 0.0,
            "transformers_version": "4.43.1",
        }
    if name == "qwen3_qknorm_tied":  # as Qwen3-0.6B's
        return {
            **COMMON, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 8,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None,
            "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": 2, "tie_word_embeddings": True,
            "transformers_version": "4.51.0",
        }
    if name == "mistral_window":  # as Mistral-7B-v0.1's
        return {
            **COMMON, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 4, "tie_word_embeddings": False,
            "transformers_version": "4.34.0.dev0",
        }
    if name == "phi3_fused":  # as Phi-3-mini-4k-instruct's (without auto_map)
        return {
            **COMMON, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": 5,
            "original_max_position_embeddings": 64, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
            "attention_dropout": 0.0, "attention_bias": False, "pad_token_id": 0, "tie_word_embeddings": False,
            "transformers_version": "4.40.2",
        }
    if name == "gemma2_softcap":  # as gemma-2-2b's (no tie_word_embeddings key: Gemma2Config defaults to tied)
        return {
            **COMMON, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "head_dim": 8,
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "query_pre_attn_scalar": 6, "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0, "sliding_window": 4, "cache_implementation": "hybrid",
            "layer_types": ["sliding_attention", "full_attention"], "attention_bias": False,
            "attention_dropout": 0.0, "pad_token_id": 0, "transformers_version": "4.42.4",
        }
    if name == "gemma3_text":  # as gemma-3-1b-it's, with gemma-3-4b's linear rope scaling (global layers only)
        return {
            **COMMON, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 8,
            "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "rope_theta": 1000000,
            "rope_local_base_freq": 10000, "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "query_pre_attn_scalar": 6, "sliding_window": 4, "sliding_window_pattern": 2,
            "layer_types": ["sliding_attention", "full_attention"], "final_logit_softcapping": None,
            "attn_logit_softcapping": None, "cache_implementation": "hybrid", "attention_bias": False,
            "attention_dropout": 0.0, "pad_token_id": 0, "eos_token_id": [2, 3],
            "transformers_version": "4.50.0.dev0",
        }
    raise KeyError(name)


CLASSES = {
    "qwen2_bias": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3_qknorm_tied": (Qwen3Config, Qwen3ForCausalLM),
    "mistral_window": (MistralConfig, MistralForCausalLM),
    "phi3_fused": (Phi3Config, Phi3ForCausalLM),
    "gemma2_softcap": (Gemma2Config, Gemma2ForCausalLM),
    "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM),
}


def family_model(name):
    config_json = config_json_for(name)
    config_cls, model_cls = CLASSES[name]
    torch.manual_seed(0)
    cfg = config_cls.from_dict(dict(config_json), attn_implementation="eager")
    model = model_cls(cfg)
    gemma = name.startswith("gemma")
    with torch.no_grad():
        for n, p in model.named_parameters():  # (tied weights appear once)
            if p.dim() > 1:
                p.mul_(8.0)
            elif n.endswith("norm.weight") and not gemma:
                p.copy_(torch.randn_like(p) * 0.5 + 1.0)  # RMSNorm: x * w
            else:
                p.copy_(torch.randn_like(p) * 0.5)  # biases, and Gemma's x * (1 + w) norms
    model.eval()
    tied = cfg.tie_word_embeddings
    assert tied == (model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    print(name, "layer_types", getattr(cfg, "layer_types", None), "rope", cfg.rope_parameters,
          "sliding_window", getattr(cfg, "sliding_window", None), "tied", tied)
    return model, config_json, tied


def save_family(name, model, config_json, tied):
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if tied:
        state.pop("lm_head.weight")
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))
    return d


@torch.no_grad()
def greedy_checks(model, prompt, ids, want):
    """The KV-cached greedy (by hand, and the base model's generate(inputs_embeds)) agrees with the recomputed
    one; returns the smallest top-1/top-2 logit margin."""
    embeds = torch.cat([prompt, model.get_input_embeddings()(torch.tensor(ids))], dim=0)[None]
    out = model(inputs_embeds=embeds, use_cache=True)
    cache, logits, got, margin = out.cache, out.logits[0, -1], [], float("inf")
    for _ in range(NEW_TOKENS):
        top = logits.topk(2).values
        margin = min(margin, float(top[0] - top[1]))
        nxt = int(logits.argmax())
        got.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[0, -1]
    assert got == want, f"cached greedy {got} != recomputed {want}"
    gen = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    assert gen[0].tolist() == want, f"generate(inputs_embeds) {gen[0].tolist()} != recomputed {want}"
    return margin


def causal_fixture(name, model, config_json, tied):
    """model_fixtures.llama_fixture's body for any causal LM (same seeds, examples and output format)."""
    save_family(name, model, config_json, tied)
    hidden = config_json["hidden_size"]
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=R))
    peft_model.eval()
    # peft's word embeddings are the model's input embedding module (Gemma's scaled one included).
    assert peft_model.word_embeddings is model.get_input_embeddings()
    torch.manual_seed(5)
    prompt = torch.randn(R, hidden)
    emb = set_prompt(peft_model, prompt)

    out = {"virtual_tokens": R, "prompt": flat(prompt), "examples": [], "versions": VERSIONS}
    total = sum(len(e["answer_ids"]) for e in EXAMPLES)
    emb.grad = None
    batch_loss = 0.0
    margins, peft_generate = [], []
    for ex in EXAMPLES:
        ids = torch.tensor([ex["input_ids"] + ex["answer_ids"]])
        labels = torch.tensor([[-100] * len(ex["input_ids"]) + ex["answer_ids"]])
        emb_grad_before = None if emb.grad is None else emb.grad.clone()
        emb.grad = None
        res = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        res.loss.backward()
        grad = emb.grad[:R].clone()
        emb.grad = None
        full = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        emb.grad = emb_grad_before
        res2 = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        (res2.loss * len(ex["answer_ids"]) / total).backward()
        batch_loss += res2.loss.item() * len(ex["answer_ids"]) / total
        want = greedy(model, prompt, ex["input_ids"])
        margins.append(greedy_checks(model, prompt, ex["input_ids"], want))
        got = peft_greedy(peft_model, ex["input_ids"])
        peft_generate.append("all" if got == want else "first" if got[:1] == want[:1] else "none")
        out["examples"].append({
            **ex,
            "loss": res.loss.item(),
            "whole_sequence_loss": full.loss.item(),
            "logits": flat(res.logits[0, R:]),
            "grad": flat(grad),
            "greedy": want,
        })
    out["batch"] = {"loss": batch_loss, "grad": flat(emb.grad[:R])}
    (OUT / name / "expected.json").write_text(json.dumps(out))
    # peft 0.21.2's generate looks for `past_key_values` (transformers 5.x passes `cache`), so it prepends
    # the prompt again at every step: only its first token is expected to agree (docs/method.md §8).
    print(name, "batch loss", batch_loss, "| min greedy margin %.4f" % min(margins),
          "| tokens of peft's generate that agree:", peft_generate)
    assert min(margins) > 1e-3, "greedy too close to a tie to be a stable reference"
    return out


@torch.no_grad()
def peft_greedy(peft_model, ids):
    try:
        t = torch.tensor([ids])
        gen = peft_model.generate(input_ids=t, attention_mask=torch.ones_like(t), max_new_tokens=NEW_TOKENS,
                                  do_sample=False, num_beams=1, min_new_tokens=NEW_TOKENS)
        return gen[0, len(ids):].tolist()
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}: {e}"


def check_reload(name, out):
    """config.json + model.safetensors alone (AutoModel, no hub) give back the fixture's logits."""
    d = OUT / name
    state = load_file(str(d / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32)
    model.eval()
    sd = model.state_dict()
    for k, v in state.items():
        assert torch.equal(sd[k], v), k
    prompt = torch.tensor(out["prompt"]).reshape(R, -1)
    with torch.no_grad():
        for ex in out["examples"]:
            ids = torch.tensor(ex["input_ids"] + ex["answer_ids"])
            embeds = torch.cat([prompt, model.get_input_embeddings()(ids)], dim=0)[None]
            logits = model(inputs_embeds=embeds).logits[0, R:]
            diff = (logits.reshape(-1) - torch.tensor(ex["logits"])).abs().max().item()
            assert diff < 1e-5, (name, diff)
    print(name, "reloaded from config.json + model.safetensors:", len(state), "tensors,",
          (d / "model.safetensors").stat().st_size, "bytes")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    names = sys.argv[1:] or list(CLASSES)
    for name in names:
        model, config_json, tied = family_model(name)
        out = causal_fixture(name, model, config_json, tied)
        check_reload(name, out)
