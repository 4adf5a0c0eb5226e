"""The corpus of crafted files every test run replays (tests/fixtures/hostile, replayed by
trainer/tests/corpus.rs): the hostile inputs of issue 15, each a small file that once crashed,
aborted, hung, or was accepted. Plain Python (no packages); run once, files committed:

    python3 tests/reference/hostile_corpus.py

Each subdirectory is one parser, replayed through the command a user would run:
  runfile/   tpv inspect FILE
  peft/      tpv inspect DIR
  evalset/   tpv eval --model tests/fixtures/models/llama_tied --data FILE
  study/     tpv sweep FILE --emit slurm -o TMP
  manifest/  tpv_shared::report::Manifest::from_json
  gguf/      tpv eval --model FILE --data tests/fixtures/hostile/one.jsonl
  config/    tpv eval --model DIR --data tests/fixtures/hostile/one.jsonl, DIR a copy of the
             fixture model the name starts with (FIXTURE.FIELD=VALUE.json) with this config.json
Every file must be refused with an error (exit status 1, "error:" on stderr), never a panic, an
abort, a hang, or success.
"""
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "hostile"


def safetensors(meta, tensors):
    """tensors: name -> (dtype, shape, bytes)."""
    header, data, off = {"__metadata__": meta}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def run_meta(rows, dim, layout=None):
    m = {
        "kind": "task-prompt",
        "virtual_tokens": rows,
        "token_dim": dim,
        "dtype": "F32",
        "tool_version": "0.1.0",
        "created_at": "2026-12-05T00:00:00Z",
    }
    if layout is not None:
        m["layout"] = layout
    return {"format": "tpv-run", "format_version": "1", "tpv": json.dumps(m)}


def f32(n, x=0.01):
    return struct.pack(f"<{n}f", *([x] * n))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def runfiles():
    d = OUT / "runfile"
    for name, n in [("submodules-2e62", 1 << 62), ("submodules-2e63", 1 << 63),
                    ("submodules-u64max", (1 << 64) - 1), ("submodules-1e12", 10**12),
                    ("submodules-1e7", 10**7)]:
        meta = run_meta(2, 4, {"num_transformer_submodules": n})
        write(d / f"{name}.safetensors", safetensors(meta, {"prompt": ("F32", [2, 4], f32(8))}))
    write(d / "zero-rows.safetensors", safetensors(run_meta(0, 4), {"prompt": ("F32", [0, 4], b"")}))
    write(d / "zero-dim.safetensors", safetensors(run_meta(4, 0), {"prompt": ("F32", [4, 0], b"")}))
    # A header that says 5 MiB (over the 4 MiB limit) in a 64-byte file.
    write(d / "huge-header-length.safetensors", struct.pack("<Q", 5 << 20) + b"{" + b" " * 55)
    write(d / "header-length-u64max.safetensors", struct.pack("<Q", (1 << 64) - 1) + b"{}")
    sample = (ROOT / "tests/fixtures/runs/v1/sst2-origin0.safetensors").read_bytes()
    write(d / "truncated.safetensors", sample[: len(sample) // 2])
    nan = run_meta(2, 2)
    write(d / "nan-values.safetensors",
          safetensors(nan, {"prompt": ("F32", [2, 2], struct.pack("<4f", 1.0, float("nan"), 2.0, 3.0))}))


def peft():
    d = OUT / "peft"
    for name, cfg in [
        ("submodules-2e62", {"num_transformer_submodules": 1 << 62, "num_virtual_tokens": 2}),
        ("virtual-tokens-u64max", {"num_transformer_submodules": 2, "num_virtual_tokens": (1 << 64) - 1}),
        ("zero-virtual-tokens", {"num_virtual_tokens": 0}),
    ]:
        config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "token_dim": 4, **cfg}
        write(d / name / "adapter_config.json", json.dumps(config))
        write(d / name / "adapter_model.safetensors",
              safetensors({"format": "pt"}, {"prompt_embeddings": ("F32", [2, 4], f32(8))}))


def evalsets():
    d = OUT / "evalset"
    base = {
        "format": "tpv-eval-set", "version": 1, "name": "plain", "split": "test", "split_size": 1,
        "task": {"name": "plain", "template": "{input}", "instruction": "", "fields": [],
                 "label_column": "target", "labels": [], "label_kind": "text", "metrics": []},
        "encode": {"chat": False, "loss_on": "answer"},
        "max_new_tokens": 1000000000, "scoring": "generate",
        "records": [{"input": "w5 w17", "target": "w12"}],
    }
    write(d / "max-new-tokens-1e9.json", json.dumps(base))
    write(d / "newer-version.json", json.dumps({**base, "version": 99, "max_new_tokens": 3}))
    write(d / "wrong-format.json", json.dumps({**base, "format": "something-else", "max_new_tokens": 3}))
    write(d / "truncated.json", json.dumps(base)[:80])


STUDY = """[study]
name = "{name}"
output = "runs/hostile"
origins = {origins}
tasks = {tasks}

[study.addition]
lambdas = {lambdas}

[model]
path = "smollm2"

[prompt]
virtual_tokens = {tokens}
init = {{ sample_vocab = {{ seed = 7 }} }}

[optim]
max_steps = 4
batch_size = {batch}
{extra}
"""


def studies():
    d = OUT / "study"
    ok = dict(name="hostile", origins="[0, 1]", tasks='["sst2", "mnli"]', lambdas="[0.5, 1.0]",
              tokens=4, batch=4, extra="")
    for name, change in [
        ("task-traversal", {"tasks": '["sst2", "../../x"]'}),
        ("task-absolute", {"tasks": '["sst2", "/tmp/x"]'}),
        ("name-newline", {"name": "tiny\\n#SBATCH --wrap=touch /tmp/pwned"}),
        ("duplicate-origins", {"origins": "[0, 1, 1]"}),
        ("nan-lambda", {"lambdas": "[0.5, nan]"}),
        ("batch-size-1e11", {"batch": "100000000000"}),
        ("virtual-tokens-i64max", {"tokens": "9223372036854775807"}),
        ("epochs-nan", {"extra": "epochs = nan"}),
        ("warmup-ratio", {"extra": "warmup_ratio = 1.5"}),
    ]:
        text = STUDY.format(**{**ok, **change})
        if name == "epochs-nan":
            text = text.replace("max_steps = 4\n", "")
        write(d / f"{name}.toml", "# A hostile study config (tests/reference/hostile_corpus.py).\n" + text)


def manifests():
    d = OUT / "manifest"
    base = {"format": "tpv-report", "version": 1, "name": "x", "runs": []}
    write(d / "newer-version.json", json.dumps({**base, "version": 2}))
    write(d / "wrong-format.json", json.dumps({**base, "format": "tpv-run"}))
    write(d / "no-version.json", json.dumps({k: v for k, v in base.items() if k != "version"}))
    write(d / "truncated.json", json.dumps(base)[:30])
    write(d / "runs-not-a-list.json", json.dumps({**base, "runs": {"a": 1}}))


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def ggufs():
    d = OUT / "gguf"
    magic = b"GGUF" + struct.pack("<I", 3)
    # Header counts far past what the file holds.
    write(d / "tensor-count-huge.gguf", magic + struct.pack("<QQ", 1 << 40, 0))
    write(d / "kv-count-huge.gguf", magic + struct.pack("<QQ", 0, 1 << 40))
    # One metadata string that claims 2^40 bytes.
    write(d / "string-length-huge.gguf",
          magic + struct.pack("<QQ", 0, 1) + gguf_string("general.architecture")
          + struct.pack("<I", 8) + struct.pack("<Q", 1 << 40) + b"llama")
    # An array of 2^40 u32 values.
    write(d / "array-length-huge.gguf",
          magic + struct.pack("<QQ", 0, 1) + gguf_string("tokenizer.ggml.tokens")
          + struct.pack("<I", 9) + struct.pack("<I", 4) + struct.pack("<Q", 1 << 40))
    write(d / "truncated.gguf", magic + struct.pack("<QQ", 1, 1) + gguf_string("general.arch"))
    write(OUT / "one.jsonl", json.dumps({"input": "w5 w17", "target": "w12"}) + "\n")


# Model configs (issue items 5 and 6): a tiny fixture's config.json with one value that describes no
# model. Named FIXTURE.FIELD=VALUE.json: the fixture whose weights it is loaded with
# (tests/fixtures/models/FIXTURE), and the field its error must name. Replayed by
# shared/tests/configs.rs (the error names the field) and trainer/tests/corpus.rs (tpv eval).
CONFIG_CASES = [
    ("llama_tied", "vocab_size", 0),
    ("llama_tied", "hidden_size", 0),
    ("llama_tied", "intermediate_size", 0),
    ("llama_tied", "num_hidden_layers", 0),
    ("llama_tied", "num_attention_heads", 0),
    ("llama_tied", "num_attention_heads", 3),
    ("llama_tied", "num_key_value_heads", 0),
    ("llama_tied", "num_key_value_heads", 3),
    ("llama_tied", "num_key_value_heads", 8),
    # With no layers, nothing checks head_dim against a tensor: the rotary table was sized by it.
    ("llama_tied", "head_dim", 1 << 40),
    ("llama_tied", "head_dim", 1 << 31),
    ("llama_tied", "head_dim", 1 << 29),
    ("llama_tied", "head_dim", 5),
    ("llama_tied", "rms_norm_eps", -1),
    ("llama_tied", "rms_norm_eps", 0),
    ("llama_tied", "rms_norm_eps", 1e-320),
    ("llama_tied", "max_position_embeddings", 0),
    ("llama_tied", "max_position_embeddings", 1 << 62),
    ("llama_tied", "rope_theta", -1),
    ("llama_tied", "rope_theta", 0),
    ("llama_tied", "rope_theta", 1e300),
    ("llama_tied", "rope_scaling.factor", 0),
    ("llama_tied", "rope_scaling.factor", -2),
    ("llama_gqa_rope3", "rope_parameters.rope_theta", -1),
    ("llama_gqa_rope3", "rope_parameters.factor", 0),
    ("llama_gqa_rope3", "rope_parameters.low_freq_factor", 0),
    ("llama_gqa_rope3", "rope_parameters.high_freq_factor", 0),
    ("llama_gqa_rope3", "rope_parameters.high_freq_factor", 1),
    ("llama_gqa_rope3", "rope_parameters.original_max_position_embeddings", 0),
    ("llama_gqa_rope3", "rope_parameters.factor", "zeros"),
    ("t5_relu_tied", "vocab_size", 0),
    ("t5_relu_tied", "d_model", 0),
    ("t5_relu_tied", "d_kv", 0),
    ("t5_relu_tied", "d_ff", 0),
    ("t5_relu_tied", "num_layers", 0),
    ("t5_relu_tied", "num_decoder_layers", 0),
    ("t5_relu_tied", "num_heads", 0),
    ("t5_relu_tied", "relative_attention_num_buckets", 1),
    ("t5_relu_tied", "relative_attention_max_distance", 4),
    ("t5_relu_tied", "layer_norm_epsilon", -1),
    ("t5_relu_tied", "dropout_rate", 1),
    ("t5_gated_untied", "layer_norm_epsilon", 0),
    ("t5_gated_untied", "d_kv", 1 << 40),
]


def model_configs():
    d = OUT / "config"
    for fixture, field, value in CONFIG_CASES:
        config = json.loads((ROOT / "tests/fixtures/models" / fixture / "config.json").read_text())
        label = value
        if field.startswith("rope_scaling."):
            config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
        if value == "zeros":
            # llama3 scaling with every number zero (the probe's case): the first is named.
            config["rope_parameters"].update(factor=0.0, low_freq_factor=0.0, high_freq_factor=0.0,
                                             original_max_position_embeddings=0)
            label = "zeros"
        else:
            at = config
            *parents, key = field.split(".")
            for p in parents:
                at = at[p]
            at[key] = value
        if field == "head_dim" and value > 64:
            config["num_hidden_layers"] = 0
        write(d / f"{fixture}.{field}={label}.json", json.dumps(config, indent=2) + "\n")


def gguf_value(kind, value):
    if kind == "u32":
        return struct.pack("<I", 4) + struct.pack("<I", value)
    if kind == "f32":
        return struct.pack("<I", 6) + struct.pack("<f", value)
    if kind == "str":
        return struct.pack("<I", 8) + gguf_string(value)
    # an array of strings
    return struct.pack("<I", 9) + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + b"".join(
        gguf_string(s) for s in value)


def gguf_model(heads, kv_heads):
    """A LLaMA GGUF (d=16) whose metadata names `heads` / `kv_heads` attention heads, with the
    Q and K weights of layer 0 (f32) that loading unpermutes by those counts."""
    meta = [
        ("general.architecture", "str", "llama"),
        ("llama.embedding_length", "u32", 16),
        ("llama.feed_forward_length", "u32", 32),
        ("llama.block_count", "u32", 1),
        ("llama.attention.head_count", "u32", heads),
        ("llama.attention.head_count_kv", "u32", kv_heads),
        ("llama.rope.freq_base", "f32", 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        ("llama.context_length", "u32", 64),
        ("tokenizer.ggml.tokens", "strs", ["a", "b"]),
    ]
    tensors = [("blk.0.attn_q.weight", 16), ("blk.0.attn_k.weight", 8)]
    out = b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", len(tensors), len(meta))
    for key, kind, value in meta:
        out += gguf_string(key) + gguf_value(kind, value)
    offset = 0
    for name, rows in tensors:
        # ggml order: columns first; type 0 = F32.
        out += gguf_string(name) + struct.pack("<I", 2) + struct.pack("<QQ", 16, rows)
        out += struct.pack("<I", 0) + struct.pack("<Q", offset)
        offset += rows * 16 * 4
    out += b"\0" * ((32 - len(out) % 32) % 32)
    return out + f32(offset // 4)



def model_ggufs():
    d = OUT / "gguf"
    # Zero heads: Q/K rows were unpermuted by rows / heads (a division by zero).
    write(d / "head-count-zero.gguf", gguf_model(0, 0))
    write(d / "head-count-kv-zero.gguf", gguf_model(4, 0))


# Subdirectories written by other tools, which this script leaves as they are: parquet/ (the
# parquet test, TPV_WRITE_CORPUS=1) and template/ (hand-written chat templates, see its README).
KEPT = {"parquet", "template"}

if __name__ == "__main__":
    if OUT.exists():
        for entry in OUT.iterdir():
            if entry.name in KEPT:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    runfiles()
    peft()
    evalsets()
    studies()
    manifests()
    ggufs()
    model_configs()
    model_ggufs()
    n = sum(1 for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {n} files under {OUT.relative_to(ROOT)}")
