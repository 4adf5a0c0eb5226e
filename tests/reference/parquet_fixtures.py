"""A tiny HF hub cache with parquet files, laid out as `huggingface_hub` leaves them, for the
parquet reader and the task loader (tests/fixtures/hub).

    ~/.cache/tpv/refenv/bin/python tests/reference/parquet_fixtures.py

pyarrow 26.0.1, snappy compression (the hub's default for its parquet conversions). The glue/sst2
columns are those of nyu-mll/glue (sentence: string, label: int64 class index, idx: int32);
snli has label -1 rows (no gold label) that the loader drops; squad_v2's `answers` is a struct of
lists, as on the hub.
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "tests" / "fixtures" / "hub"
REV = "0123456789abcdef0123456789abcdef01234567"


def write(repo, path, table):
    snap = HUB / f"datasets--{repo.replace('/', '--')}" / "snapshots" / REV
    (snap / path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, snap / path, compression="snappy")
    refs = HUB / f"datasets--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(REV)


def sst2(n, start):
    sentences = [f"sentence number {i} is {'great' if i % 3 else 'awful'}" for i in range(start, start + n)]
    return pa.table({
        "sentence": pa.array(sentences, pa.string()),
        "label": pa.array([1 if i % 3 else 0 for i in range(start, start + n)], pa.int64()),
        "idx": pa.array(list(range(n)), pa.int32()),
    })


write("nyu-mll/glue", "sst2/train-00000-of-00001.parquet", sst2(30, 0))
write("nyu-mll/glue", "sst2/validation-00000-of-00001.parquet", sst2(8, 100))
write("nyu-mll/glue", "sst2/test-00000-of-00001.parquet", sst2(4, 200).set_column(1, "label", pa.array([-1] * 4)))

snli = pa.table({
    "premise": ["A man plays.", "A dog runs.", "Kids sing.", "Nobody knows."],
    "hypothesis": ["Someone plays.", "A cat sleeps.", "Kids are loud.", "It is unknown."],
    "label": pa.array([0, 2, 1, -1], pa.int64()),
})
write("stanfordnlp/snli", "plain_text/train-00000-of-00001.parquet", snli)
write("stanfordnlp/snli", "plain_text/validation-00000-of-00001.parquet", snli)

squad = pa.table({
    "id": ["a", "b"],
    "question": ["Who won?", "What is unanswerable?"],
    "context": ["The Denver Broncos won.", "Nothing here."],
    "answers": pa.array([{"text": ["Denver Broncos", "The Denver Broncos"], "answer_start": [0, 0]},
                         {"text": [], "answer_start": []}],
                        pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])),
})
write("rajpurkar/squad_v2", "squad_v2/validation-00000-of-00001.parquet", squad)
print("wrote", HUB)
