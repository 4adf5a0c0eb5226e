"""Reference numbers for the soft-prompt forward passes, from HF transformers + peft on tiny random
models. Writes tests/fixtures/models/NAME/{config.json, model.safetensors, expected.json}.

    ~/.cache/tpv/refenv/bin/python tests/reference/model_fixtures.py

Versions: tests/reference/requirements.txt. Models (all float32, eager attention, dropout 0):
- t5_relu_tied:    original T5 (relu FFN, tied embeddings, decoder output scaled by d_model^-0.5)
- t5_gated_untied: T5 v1.1 / flan-T5 (gated-gelu FFN, separate lm_head, no scaling)
- llama_gqa_rope3: LLaMA with grouped-query attention and llama3 rope scaling, untied head,
                   config in the transformers 5.x style (`rope_parameters`)
- llama_tied:      LLaMA with a tied head, config in the 4.x style (top-level `rope_theta`)

expected.json holds, per example (token ids, no tokenizer): the prompt (R x d), the per-example
loss (mean NLL over the target tokens), the logits over the example's own positions, the gradient
of the loss w.r.t. the prompt, and greedy continuations; plus the loss and gradient of the padded
batch (mean over all target tokens of the batch, as HF computes it).
"""
import json
import math
from pathlib import Path

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "models"
R = 3  # virtual tokens
NEW_TOKENS = 6


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def save(name, model, config_json):
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config_json["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    # Tied copies of the shared embedding are stored once, as in hub checkpoints.
    for k in ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]:
        state.pop(k, None)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True))
    return d


def set_prompt(peft_model, prompt):
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.zero_()
        emb[:R] = prompt
    return emb


# ----------------------------------------------------------------------------------- T5

def t5_model(gated):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                   dropout_rate=0.0, layer_norm_epsilon=1e-6, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, feed_forward_proj="gated-gelu" if gated else "relu",
                   tie_word_embeddings=not gated, attn_implementation="eager")
    model = T5ForConditionalGeneration(cfg)
    if gated:
        # transformers 5.x always ties T5's head; give the untied variant its own head (as flan-T5 has)
        # and no output scaling (cfg.scale_decoder_outputs is False because tie_word_embeddings=False).
        model.lm_head.weight = torch.nn.Parameter(torch.randn(64, 16) * 0.25)
        assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
        assert not cfg.scale_decoder_outputs
    else:
        assert cfg.scale_decoder_outputs
    model.eval()
    config_json = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": 64, "d_model": 16,
        "d_kv": 4, "d_ff": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20, "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu" if gated else "relu",
        "tie_word_embeddings": not gated, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
        "is_encoder_decoder": True,
    }
    return model, config_json


def t5_fixture(name, gated):
    model, config_json = t5_model(gated)
    save(name, model, config_json)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=R))
    peft_model.eval()
    torch.manual_seed(5)
    prompt = torch.randn(R, 16)
    emb = set_prompt(peft_model, prompt)

    examples = [
        {"input_ids": [5, 17, 33, 2, 9, 1], "labels": [12, 7, 1]},
        {"input_ids": [44, 3, 1], "labels": [30, 1]},
        {"input_ids": [8, 8, 21, 60, 61, 62, 63, 4, 1], "labels": [2, 1]},
    ]
    out = {"virtual_tokens": R, "prompt": flat(prompt), "examples": []}
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor([ex["labels"]])
        emb.grad = None
        res = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        res.loss.backward()
        gen = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                  do_sample=False, num_beams=1)
        out["examples"].append({
            **ex,
            "loss": res.loss.item(),
            "logits": flat(res.logits[0]),
            "grad": flat(emb.grad[:R]),
            "greedy": gen[0].tolist(),  # starts with the decoder start token
        })
        assert emb.grad[R:].abs().sum().item() == 0.0  # the decoder block is never used

    # The padded batch (right padding, as HF tokenizers pad T5).
    tmax = max(len(e["input_ids"]) for e in examples)
    lmax = max(len(e["labels"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (tmax - len(e["input_ids"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (tmax - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (lmax - len(e["labels"])) for e in examples])
    emb.grad = None
    res = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    res.loss.backward()
    out["batch"] = {"loss": res.loss.item(), "grad": flat(emb.grad[:R])}
    (OUT / name / "expected.json").write_text(json.dumps(out))
    print(name, "batch loss", res.loss.item())


# ----------------------------------------------------------------------------------- LLaMA

def llama_model(tied, rope3):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2 if rope3 else 4, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied, attn_implementation="eager",
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if rope3:
        kwargs["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8}
    else:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    cfg = LlamaConfig(**kwargs)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    model.eval()
    config_json = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": kwargs["num_key_value_heads"], "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    if rope3:
        config_json["rope_parameters"] = kwargs["rope_parameters"]  # transformers 5.x style
    else:
        config_json["rope_theta"] = 10000.0  # transformers 4.x style
        config_json["rope_scaling"] = None
    return model, config_json


def llama_fixture(name, tied, rope3):
    model, config_json = llama_model(tied, rope3)
    save(name, model, config_json)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=R))
    peft_model.eval()
    torch.manual_seed(5)
    prompt = torch.randn(R, 16)
    emb = set_prompt(peft_model, prompt)

    # input ids, then answer ids: loss on the answer only (labels -100 on the input).
    examples = [
        {"input_ids": [1, 5, 17, 33, 9], "answer_ids": [12, 7, 2]},
        {"input_ids": [1, 44, 3], "answer_ids": [30, 2]},
        {"input_ids": [1, 8, 8, 21, 60, 61, 62, 63, 4, 11, 40], "answer_ids": [2]},
    ]
    out = {"virtual_tokens": R, "prompt": flat(prompt), "examples": []}
    total = sum(len(e["answer_ids"]) for e in examples)
    emb.grad = None
    batch_loss = 0.0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"] + ex["answer_ids"]])
        labels = torch.tensor([[-100] * len(ex["input_ids"]) + ex["answer_ids"]])
        # Per-example numbers in a fresh graph.
        emb_grad_before = None if emb.grad is None else emb.grad.clone()
        emb.grad = None
        res = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        res.loss.backward()
        grad = emb.grad[:R].clone()
        # Whole-sequence loss (every token after the first predicts the next), for the option.
        emb.grad = None
        full = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        # Accumulate the batch gradient: sum_i n_i * loss_i / N.
        emb.grad = emb_grad_before
        res2 = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        (res2.loss * len(ex["answer_ids"]) / total).backward()
        batch_loss += res2.loss.item() * len(ex["answer_ids"]) / total
        out["examples"].append({
            **ex,
            "loss": res.loss.item(),
            "whole_sequence_loss": full.loss.item(),
            "logits": flat(res.logits[0, R:]),  # the example's own positions
            "grad": flat(grad),
            "greedy": greedy(model, prompt, ex["input_ids"]),
        })
    out["batch"] = {"loss": batch_loss, "grad": flat(emb.grad[:R])}
    (OUT / name / "expected.json").write_text(json.dumps(out))
    print(name, "batch loss", batch_loss)


@torch.no_grad()
def greedy(model, prompt, ids):
    # Full recomputation at each step with the base model (peft 0.21.2's generate re-prepends the
    # prompt at every step under transformers 5.x, see docs/method.md §8).
    ids = list(ids)
    new = []
    for _ in range(NEW_TOKENS):
        embeds = torch.cat([prompt, model.get_input_embeddings()(torch.tensor(ids))], dim=0)[None]
        logits = model(inputs_embeds=embeds).logits[0, -1]
        nxt = int(logits.argmax())
        new.append(nxt)
        ids.append(nxt)
    return new


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    t5_fixture("t5_relu_tied", gated=False)
    t5_fixture("t5_gated_untied", gated=True)
    llama_fixture("llama_gqa_rope3", tied=False, rope3=True)
    llama_fixture("llama_tied", tied=True, rope3=False)
