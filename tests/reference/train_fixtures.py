"""Reference trajectories for the trainer: a few steps of soft-prompt tuning with torch + peft on the
tiny fixture models (tests/fixtures/models, written by model_fixtures.py). Writes
tests/fixtures/train/NAME.json.

    ~/.cache/tpv/refenv/bin/python tests/reference/train_fixtures.py

The loop is what transformers' Trainer does for prompt tuning, written out so every step is visible:
torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight decay), transformers'
get_linear_schedule_with_warmup / get_cosine_schedule_with_warmup stepped after the optimizer (so
the first update uses the LR of step 0), the loss of an optimizer step = summed target-token NLL over
all its micro-batches divided by their total target-token count (Trainer's num_items_in_batch),
torch.nn.utils.clip_grad_norm_ when max_grad_norm is set. Dropout 0, no shuffling.

Cases:
- t5_linear: T5 (relu, tied), R=3, one right-padded batch of 3 examples every step, 5 steps,
  linear warmup 2, lr 0.3, weight decay 1e-5 (the issue's parity case).
- llama_cosine_accum_clip: LLaMA (GQA, llama3 rope), R=3, two micro-batches per step (gradient
  accumulation 2, unequal token counts), 4 steps, cosine warmup 1, lr 0.1, wd 0.01, max_grad_norm 0.5.
- qwen3_cosine_accum_clip: the same run on Qwen3 (tests/fixtures/models/qwen3_qknorm_tied, written by
  family_fixtures.py: q/k norms, head_dim != hidden/heads, tied head).

Cases can be named on the command line to write only those (e.g. `... train_fixtures.py
qwen3_cosine_accum_clip`); without arguments all are written.
"""
import json
import sys
from pathlib import Path

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM, Qwen3ForCausalLM, T5ForConditionalGeneration
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
OUT = ROOT / "tests" / "fixtures" / "train"
R = 3

# Two micro-batches per step (gradient accumulation 2, unequal token counts).
CAUSAL_MICRO_BATCHES = [
    [{"input_ids": [1, 5, 17, 33, 9], "answer_ids": [12, 7, 2]},
     {"input_ids": [1, 44, 3], "answer_ids": [30, 2]}],
    [{"input_ids": [1, 8, 8, 21, 60, 61, 62, 63, 4, 11, 40], "answer_ids": [2]}],
]


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def t5_batch(examples):
    tmax = max(len(e["input_ids"]) for e in examples)
    lmax = max(len(e["labels"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (tmax - len(e["input_ids"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (tmax - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (lmax - len(e["labels"])) for e in examples])
    return dict(input_ids=ids, attention_mask=mask, labels=labels), sum(len(e["labels"]) for e in examples)


def llama_batch(examples):
    # Right padding: with a causal mask, pads after the sequence change nothing before them.
    seqs = [e["input_ids"] + e["answer_ids"] for e in examples]
    n = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    labels = torch.tensor([[-100] * len(e["input_ids"]) + e["answer_ids"] + [-100] * (n - len(s))
                           for e, s in zip(examples, seqs)])
    return dict(input_ids=ids, attention_mask=mask, labels=labels), sum(len(e["answer_ids"]) for e in examples)


def summed_nll(peft_model, batch, r):
    labels = batch["labels"]
    if peft_model.config.is_encoder_decoder:
        # labels only to build the decoder inputs (shift right, -100 -> pad); the loss is summed below.
        logits = peft_model(**batch).logits
    else:
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # peft prepends R virtual positions to the logits; token t is predicted at t-1.
        logits = logits[:, r:, :]
        logits = logits[:, :-1, :]
        labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def run(name, model, task_type, steps, micro_batches, make_batch, lr, wd, warmup, scheduler, max_grad_norm):
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=task_type, num_virtual_tokens=R))
    peft_model.train()
    emb = peft_model.prompt_encoder["default"].embedding.weight
    torch.manual_seed(5)
    init = torch.randn(R, model.config.hidden_size if hasattr(model.config, "hidden_size") else 16)
    with torch.no_grad():
        emb.zero_()
        emb[:R] = init
    opt = torch.optim.AdamW([emb], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    sched = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}[scheduler](
        opt, warmup, steps)
    losses, lrs, grad_norms = [], [], []
    for _ in range(steps):
        batches = [make_batch(mb) for mb in micro_batches]
        total = sum(n for _, n in batches)
        step_loss = 0.0
        for batch, _ in batches:
            loss = summed_nll(peft_model, batch, R) / total
            loss.backward()
            step_loss += loss.item()
        if max_grad_norm is not None:
            grad_norms.append(torch.nn.utils.clip_grad_norm_([emb], max_grad_norm).item())
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(step_loss)
    out = {
        "virtual_tokens": R,
        "init": flat(init),
        "micro_batches": micro_batches,
        "steps": steps,
        "learning_rate": lr,
        "weight_decay": wd,
        "warmup_steps": warmup,
        "scheduler": scheduler,
        "max_grad_norm": max_grad_norm,
        "losses": losses,
        "lrs": lrs,
        "grad_norms": grad_norms,
        "trained": flat(emb[:R]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(name, "losses", [round(x, 6) for x in losses], "lrs", lrs)


def t5_linear():
    t5 = T5ForConditionalGeneration.from_pretrained(MODELS / "t5_relu_tied", dropout_rate=0.0,
                                                    attn_implementation="eager")
    run("t5_linear", t5, TaskType.SEQ_2_SEQ_LM, steps=5,
        micro_batches=[[
            {"input_ids": [5, 17, 33, 2, 9, 1], "labels": [12, 7, 1]},
            {"input_ids": [44, 3, 1], "labels": [30, 1]},
            {"input_ids": [8, 8, 21, 60, 61, 62, 63, 4, 1], "labels": [2, 1]},
        ]],
        make_batch=t5_batch, lr=0.3, wd=1e-5, warmup=2, scheduler="linear", max_grad_norm=None)


def llama_cosine_accum_clip():
    llama = LlamaForCausalLM.from_pretrained(MODELS / "llama_gqa_rope3", attn_implementation="eager")
    run("llama_cosine_accum_clip", llama, TaskType.CAUSAL_LM, steps=4, micro_batches=CAUSAL_MICRO_BATCHES,
        make_batch=llama_batch, lr=0.1, wd=0.01, warmup=1, scheduler="cosine", max_grad_norm=0.5)


def qwen3_cosine_accum_clip():
    qwen3 = Qwen3ForCausalLM.from_pretrained(MODELS / "qwen3_qknorm_tied", attn_implementation="eager")
    assert qwen3.lm_head.weight.data_ptr() == qwen3.model.embed_tokens.weight.data_ptr()  # tied
    run("qwen3_cosine_accum_clip", qwen3, TaskType.CAUSAL_LM, steps=4, micro_batches=CAUSAL_MICRO_BATCHES,
        make_batch=llama_batch, lr=0.1, wd=0.01, warmup=1, scheduler="cosine", max_grad_norm=0.5)


CASES = {f.__name__: f for f in [t5_linear, llama_cosine_accum_clip, qwen3_cosine_accum_clip]}


def main(names=()):
    for name in names or CASES:
        CASES[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
