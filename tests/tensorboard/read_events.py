"""Reads the scalars of a directory's TensorBoard event files with TensorBoard's own reader and
prints them as JSON, {tag: [[step, value], ...]}: the check of tpv's event writer
(trainer/tests/train_cli.rs, live_curves_...). Runs in the venv scripts/setup.sh makes:

    ~/.cache/tpv/tbenv/bin/python tests/tensorboard/read_events.py RUN_DIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
