"""Tiny copies of the registry's hub datasets in the hub's own layouts, for the test hub of
trainer/tests/hub_datasets.rs (`configs/paper/*.toml` pass `tpv sweep --check` against it):

    python3 -m venv /tmp/pqenv && /tmp/pqenv/bin/pip install pyarrow==26.0.1
    /tmp/pqenv/bin/python tests/reference/hub_layouts.py

Writes tests/fixtures/hub_layouts/ORG--NAME/REVISION/PATH, REVISION `main` or `convert` (the
hub's `refs/convert/parquet`). Where each file lives and its split names are the registry's
`layout` (shared/src/tasks.toml), which names the public page that shows it; the columns and their
types are those of each dataset card's `dataset_info: features` (cited below), so a registry
entry naming the wrong column or a loader that mishandles a type fails the test. A few rows per
split; class labels cycle through the classes; rows without a gold label (-1) where the real data
has them; snappy compression, as the hub writes.
"""
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "hub_layouts"


def put(repo, rev, path, table):
    dest = OUT / repo.replace("/", "--") / rev / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dest, compression="snappy")


def put_text(repo, rev, path, text):
    dest = OUT / repo.replace("/", "--") / rev / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)


def ints(n, classes, start=0, unlabeled=()):
    return pa.array([-1 if i in unlabeled else (start + i) % classes for i in range(n)], pa.int64())


def words(prefix, n, start=0):
    return [f"{prefix} number {start + i} says something" for i in range(n)]


shutil.rmtree(OUT, ignore_errors=True)

# nyu-mll/glue: sentence columns, label ClassLabel (int64 in parquet; float32 for stsb), idx int32;
# the test splits are unlabeled (-1). Features: the card's dataset_info
# (https://huggingface.co/datasets/nyu-mll/glue/blob/169a67d6d185e00f8e46409cc182dd6e741b54b7/README.md).
GLUE = {
    "mnli": (["premise", "hypothesis"], 3, ["train", "validation_matched", "validation_mismatched",
                                             "test_matched", "test_mismatched"]),
    "qqp": (["question1", "question2"], 2, ["train", "validation", "test"]),
    "qnli": (["question", "sentence"], 2, ["train", "validation", "test"]),
    "sst2": (["sentence"], 2, ["train", "validation", "test"]),
    "stsb": (["sentence1", "sentence2"], None, ["train", "validation", "test"]),
    "mrpc": (["sentence1", "sentence2"], 2, ["train", "validation", "test"]),
    "rte": (["sentence1", "sentence2"], 2, ["train", "validation", "test"]),
    "cola": (["sentence"], 2, ["train", "validation", "test"]),
}
for config, (cols, classes, splits) in GLUE.items():
    for k, split in enumerate(splits):
        n = 12 if split == "train" else 6
        t = {c: words(f"{config} {split} {c}", n) for c in cols}
        if classes is None:
            label = pa.array([-1.0 if split == "test" else (i % 26) / 5 for i in range(n)], pa.float32())
        else:
            label = ints(n, classes, unlabeled=range(n) if split.startswith("test") else ())
        t["label"] = label
        t["idx"] = pa.array(range(n), pa.int32())
        put("nyu-mll/glue", "main", f"{config}/{split}-00000-of-00001.parquet", pa.table(t))
put_text("nyu-mll/glue", "main", "README.md", "---\npretty_name: GLUE\n---\n")

# allenai/scitail snli_format: gold_label is a string (entailment / neutral), not a class index
# (scitail.py in github.com/huggingface/datasets, datasets/scitail; the card's dataset_info).
for split in ["train", "validation", "test"]:
    n = 12 if split == "train" else 6
    put("allenai/scitail", "main", f"snli_format/{split}-00000-of-00001.parquet", pa.table({
        "sentence1_binary_parse": words("( parse", n),
        "sentence1_parse": words("(ROOT", n),
        "sentence1": words(f"scitail {split} premise", n),
        "sentence2_parse": words("(ROOT", n),
        "sentence2": words(f"scitail {split} hypothesis", n),
        "annotator_labels": pa.array([["neutral"] if i % 2 else ["entailment", "-"] for i in range(n)],
                                     pa.list_(pa.string())),
        "gold_label": ["neutral" if i % 2 else "entailment" for i in range(n)],
    }))
# Another config of the same repo (never downloaded for snli_format).
put("allenai/scitail", "main", "tsv_format/train-00000-of-00001.parquet", pa.table({
    "premise": ["p"], "hypothesis": ["h"], "label": ["neutral"]}))

# stanfordnlp/snli plain_text: label ClassLabel [entailment, neutral, contradiction], -1 without
# a gold label (snli.py: `label = -1 if row["gold_label"] == "-"`).
for split in ["train", "validation", "test"]:
    n = 12 if split == "train" else 7
    put("stanfordnlp/snli", "main", f"plain_text/{split}-00000-of-00001.parquet", pa.table({
        "premise": words(f"snli {split} premise", n),
        "hypothesis": words(f"snli {split} hypothesis", n),
        "label": ints(n, 3, unlabeled=(n - 1,)),
    }))

# fancyzhx/dbpedia_14: label ClassLabel (14), title, content; train and test only.
for split in ["train", "test"]:
    n = 28 if split == "train" else 14
    put("fancyzhx/dbpedia_14", "main", f"dbpedia_14/{split}-00000-of-00001.parquet", pa.table({
        "label": ints(n, 14), "title": words("Title", n), "content": words(f"dbpedia {split}", n)}))

# CogComp/trec: main holds the loading script only; the conversion's default config (unverified,
# see the registry). Features: text, coarse_label ClassLabel (6), fine_label ClassLabel (50)
# (github.com/huggingface/datasets, datasets/trec/README.md).
put_text("CogComp/trec", "main", "trec.py", "# the loading script\n")
put_text("CogComp/trec", "main", "README.md", "---\npretty_name: TREC\n---\n")
for split in ["train", "test"]:
    n = 12 if split == "train" else 6
    put("CogComp/trec", "convert", f"default/{split}/0000.parquet", pa.table({
        "text": words(f"What is trec {split} question", n),
        "coarse_label": ints(n, 6), "fine_label": ints(n, 50)}))

# fancyzhx/ag_news: the default config in data/; text, label ClassLabel (4).
for split in ["train", "test"]:
    n = 12 if split == "train" else 8
    put("fancyzhx/ag_news", "main", f"data/{split}-00000-of-00001.parquet", pa.table({
        "text": words(f"ag_news {split}", n), "label": ints(n, 4)}))

# community-datasets/yahoo_answers_topics: the label column is `topic` (ClassLabel, 10); id
# int32; train in two shards.
for path, n, start in [("train-00000-of-00002", 10, 0), ("train-00001-of-00002", 10, 10),
                       ("test-00000-of-00001", 10, 0)]:
    put("community-datasets/yahoo_answers_topics", "main", f"yahoo_answers_topics/{path}.parquet", pa.table({
        "id": pa.array(range(start, start + n), pa.int32()), "topic": ints(n, 10, start),
        "question_title": words("title", n, start), "question_content": words("content", n, start),
        "best_answer": words("answer", n, start)}))

# fancyzhx/yelp_polarity plain_text: text, label ClassLabel ["1", "2"].
for split in ["train", "test"]:
    n = 12 if split == "train" else 6
    put("fancyzhx/yelp_polarity", "main", f"plain_text/{split}-00000-of-00001.parquet", pa.table({
        "text": words(f"yelp {split}", n), "label": ints(n, 2)}))

# SetFit/sst5: main holds JSON lines (dev, not validation); the conversion has parquet with
# text, label int64 (0-4), label_text.
NAMES = ["very negative", "negative", "neutral", "positive", "very positive"]
for split, main_name in [("train", "train"), ("validation", "dev"), ("test", "test")]:
    n = 10 if split == "train" else 5
    rows = [{"text": f"sst5 {split} sentence {i}", "label": i % 5, "label_text": NAMES[i % 5]} for i in range(n)]
    put_text("SetFit/sst5", "main", f"{main_name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    put("SetFit/sst5", "convert", f"default/{split}/0000.parquet", pa.Table.from_pylist(
        rows, pa.schema([("text", pa.string()), ("label", pa.int64()), ("label_text", pa.string())])))
put_text("SetFit/sst5", "main", "README.md", "# SST-5\n")

# stanfordnlp/imdb plain_text: text, label ClassLabel [neg, pos]; unsupervised rows are -1.
for split in ["train", "test", "unsupervised"]:
    n = 8
    put("stanfordnlp/imdb", "main", f"plain_text/{split}-00000-of-00001.parquet", pa.table({
        "text": words(f"imdb {split} review", n),
        "label": ints(n, 2, unlabeled=range(n) if split == "unsupervised" else ())}))

# rajpurkar/squad_v2: answers is a struct of lists (empty for unanswerable questions).
ANSWERS = pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])
for split in ["train", "validation"]:
    n = 6
    put("rajpurkar/squad_v2", "main", f"squad_v2/{split}-00000-of-00001.parquet", pa.table({
        "id": [f"{split}{i}" for i in range(n)], "title": ["Title"] * n,
        "context": [f"The answer to question {i} is blue {i}." for i in range(n)],
        "question": [f"What is the answer to question {i}?" for i in range(n)],
        "answers": pa.array([{"text": [f"blue {i}"], "answer_start": [27]} if i % 3 else
                             {"text": [], "answer_start": []} for i in range(n)], ANSWERS)}))

# DigitalLearningGmbH/MATH-lighteval: the default config in data/, a directory per subject beside
# it; problem, level, solution, type (strings).
for top in ["data", "algebra"]:
    for split in ["train", "test"]:
        n = 6 if top == "data" else 2
        put("DigitalLearningGmbH/MATH-lighteval", "main", f"{top}/{split}-00000-of-00001.parquet", pa.table({
            "problem": [f"{top} {split}: what is {i} + {i}?" for i in range(n)],
            "level": [f"Level {1 + i % 5}" for i in range(n)],
            "solution": [f"It is $\\boxed{{{2 * i}}}$." for i in range(n)],
            "type": ["Algebra"] * n}))

files = sorted(p for p in OUT.rglob("*") if p.is_file())
print(f"wrote {len(files)} files, {sum(p.stat().st_size for p in files)} bytes under {OUT}")
