"""Reference values for shared/tests/arith.rs: arithmetic, merges and similarity.

Run:  ~/.cache/tpv/refenv/bin/python tests/reference/merges.py
Prints Rust constants to paste into shared/tests/arith.rs. Merges use peft 0.21.2's
peft.utils.merge_utils on float32 torch tensors; DARE uses peft's formula with the mask drawn by
tpv's SplitMix64 (ported below), since torch's RNG cannot be reproduced outside torch.
"""
import numpy as np
import torch
from peft.utils import merge_utils as mu

A = np.array([[0.5, -1.25, -0.625], [2.0, -0.125, 0.75]], dtype=np.float32)
B = np.array([[-0.25, 1.5, 0.5], [1.0, 0.375, -2.0]], dtype=np.float32)
C = np.array([[0.125, -0.5, -1.0], [-1.5, 0.25, 0.625]], dtype=np.float32)
D = np.array([[0.3, 0.1, -0.2], [0.7, -0.9, 0.05]], dtype=np.float32)
O = np.array([[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]], dtype=np.float32)
W = [1.0, 0.5, 2.0]


def rust(name, x):
    flat = ", ".join(repr(float(v)) for v in np.asarray(x, dtype=np.float64).ravel())
    print(f"const {name}: &[f64] = &[{flat}];")


def t(x):
    return torch.tensor(x)


def splitmix64(seed):
    state = seed
    mask = (1 << 64) - 1
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        yield ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))


def dare_pruned(tensors, drop, seed):
    rng = splitmix64(seed)
    out = []
    for x in tensors:
        keep = np.array([next(rng) >= drop for _ in range(x.size)]).reshape(x.shape)
        # peft's random_pruning with this mask: tensor * mask / density, density = 1 - drop
        out.append((t(x) * t(keep.astype(np.float32))) / (1.0 - drop))
    return out


tensors = [t(A), t(B), t(C)]
w = torch.tensor(W)
rust("SUM", mu.task_arithmetic(tensors, w))
rust("MEAN", (np.float64(1) / 3) * np.sum([wi * x.astype(np.float64) for wi, x in zip(W, [A, B, C])], axis=0))
rust("MAGNITUDE_05", mu.magnitude_prune(tensors, w, density=0.5))
rust("TIES_05_MASS", mu.ties(tensors, w, density=0.5, majority_sign_method="total"))
rust("TIES_05_COUNT", mu.ties(tensors, w, density=0.5, majority_sign_method="frequency"))
rust("TIES_1_MASS", mu.ties(tensors, w, density=1.0, majority_sign_method="total"))

pruned = dare_pruned([A, B, C], drop=0.4, seed=7)
rust("DARE_04_SEED7", mu.task_arithmetic(pruned, w))
stacked = torch.stack(pruned, dim=0)
sign_mask = mu.calculate_majority_sign_mask(stacked, method="total")
weighted = stacked * mu.reshape_weight_task_tensors(stacked, w)
rust("DARE_TIES_04_SEED7", mu.disjoint_merge(weighted, sign_mask))

# Combination: O + 0.5 * (1*A + 0.5*B + 2*C), in float64 as tpv accumulates
rust("COMBINE_L05", O.astype(np.float64) + 0.5 * np.sum([wi * x.astype(np.float64) for wi, x in zip(W, [A, B, C])], axis=0))


def cos(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


items = [A, B, C, D]
rust("COSINE_MEAN", [[cos(x.mean(0), y.mean(0)) for y in items] for x in items])
rust("COSINE_FLAT", [[cos(x, y) for y in items] for x in items])
rust("MEAN_ABS_DIFF", [[np.abs(x.astype(np.float64) - y).mean() for y in items] for x in items])
rust("NORM_DIFF", [[abs(np.linalg.norm(x.astype(np.float64)) - np.linalg.norm(y.astype(np.float64))) for y in items] for x in items])

# Across origins: task t1 = (A from o1, B from o2), task t2 = (C from o1, D from o2).
prompts = {("t1", "o1"): A, ("t1", "o2"): B, ("t2", "o1"): C, ("t2", "o2"): D}
cells = []
for ti in ["t1", "t2"]:
    for tj in ["t1", "t2"]:
        vals = [cos(prompts[(ti, oa)].mean(0), prompts[(tj, ob)].mean(0))
                for oa in ["o1", "o2"] for ob in ["o1", "o2"] if not (ti == tj and oa == ob)]
        cells.append(np.mean(vals))
rust("ACROSS_ORIGINS", cells)
