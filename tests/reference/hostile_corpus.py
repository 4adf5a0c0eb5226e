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


if __name__ == "__main__":
    if OUT.exists():
        shutil.rmtree(OUT)
    runfiles()
    peft()
    evalsets()
    studies()
    manifests()
    ggufs()
    n = sum(1 for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {n} files under {OUT.relative_to(ROOT)}")
