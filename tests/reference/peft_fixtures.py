"""Peft prompt-tuning adapters made by real peft on tiny random models, for the interop tests.

    ~/.cache/tpv/refenv/bin/python tests/reference/peft_fixtures.py make     # writes tests/fixtures/peft/
    ~/.cache/tpv/refenv/bin/python tests/reference/peft_fixtures.py verify DIR KIND ORIGINAL
        # loads an adapter written by `tpv peft export` with PeftModel.from_pretrained and checks
        # that the rows peft uses equal those of ORIGINAL (the adapter it was imported from), bit
        # for bit, and that a forward pass runs. KIND is t5 or llama.

Versions: tests/reference/requirements.txt (torch 2.15.0, transformers 5.24.0, peft 0.21.2).
"""
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "peft"
NVT = 4


def tiny_t5():
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = T5ForConditionalGeneration(cfg)
    model.name_or_path = "tpv-tiny-t5"
    return model


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=10000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.name_or_path = "tpv-tiny-llama"
    return model


def make_one(name, model, task_type, init, dtype=torch.float32):
    cfg = PromptTuningConfig(task_type=task_type, num_virtual_tokens=NVT, prompt_tuning_init=init)
    peft_model = get_peft_model(model, cfg).to(dtype)
    # Simulate training: move every stored row, so that unused rows are not trivially equal.
    torch.manual_seed(1)
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.add_(0.1 * torch.randn_like(emb))
    peft_model.save_pretrained(OUT / name)
    print(name, tuple(emb.shape))


def make():
    OUT.mkdir(parents=True, exist_ok=True)
    make_one("t5_seq2seq", tiny_t5(), TaskType.SEQ_2_SEQ_LM, PromptTuningInit.SAMPLE_VOCAB)
    make_one("llama_causal", tiny_llama(), TaskType.CAUSAL_LM, PromptTuningInit.RANDOM)
    make_one("llama_causal_bf16", tiny_llama(), TaskType.CAUSAL_LM, PromptTuningInit.RANDOM, torch.bfloat16)
    # save_pretrained writes a model card; drop it to keep fixtures small.
    for name in ["t5_seq2seq", "llama_causal", "llama_causal_bf16"]:
        readme = OUT / name / "README.md"
        if readme.exists():
            readme.unlink()


def verify(adapter_dir, kind, original_dir):
    base = tiny_t5() if kind == "t5" else tiny_llama()
    model = PeftModel.from_pretrained(base, adapter_dir)
    used = model.prompt_encoder["default"].embedding.weight.detach()[:NVT]
    original = load_file(str(Path(original_dir) / "adapter_model.safetensors"))["prompt_embeddings"][:NVT]
    assert torch.equal(used, original), "used rows differ"
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        if kind == "t5":
            out = model(input_ids=ids, labels=torch.tensor([[9, 1]]))
        else:
            out = model(input_ids=ids, labels=ids)
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    print(f"ok: peft loaded {adapter_dir} ({cfg['task_type']}), used rows bit-identical, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make()
    else:
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
