"""Reference values for ATTEMPT's mixing (shared/src/attempt.rs; checked in shared/tests/attempt.rs).

    ~/.cache/tpv/refenv/bin/python tests/reference/attempt_mixing.py

The module is the one of the replication the paper ran (DisAI-Replication-Challenge/ATTEMPT,
cpeft/attempt/model.py, `AttemptSubModule.forward`): max-pool of the input embeddings, W_down (no
bias), SiLU, W_up (no bias), LayerNorm, scores against the max-pooled source and target prompts
divided by the temperature, softmax, the attention-weighted sum of [sources; target] plus the
target. Here the input's max-pool runs over each example's own tokens (tpv's one deliberate
difference: no padding in the pool). Values are closed-form (sines and cosines of the flat index),
so the Rust test builds the same tensors without a random generator. Computed in float64; printed
as the Rust test pastes them. The loss is L = Σ C ⊙ P(x) over both examples.
"""
import math

import torch

torch.set_default_dtype(torch.float64)
K, R, D, RR = 2, 3, 4, 3  # sources, virtual tokens, hidden size, W_down's rank (r = R)
T = 0.7


def filled(shape, f):
    n = math.prod(shape)
    return torch.tensor([f(i) for i in range(n)]).reshape(shape)


sources = filled((K, R, D), lambda i: math.sin(1 + i))
target = filled((R, D), lambda i: math.cos(0.5 + 0.3 * i)).requires_grad_()
w_down = filled((D, RR), lambda i: 0.3 * math.sin(2 + 0.7 * i)).requires_grad_()  # x @ w_down
w_up = filled((RR, D), lambda i: 0.4 * math.cos(1 + 0.9 * i)).requires_grad_()
ln_w = filled((D,), lambda i: 1 + 0.1 * i).requires_grad_()
ln_b = filled((D,), lambda i: 0.05 * i - 0.1).requires_grad_()
tokens = [
    filled((3, D), lambda i: math.sin(3 + 1.3 * i)),
    filled((2, D), lambda i: math.cos(2 + 0.8 * i)),
]
C = filled((2, R, D), lambda i: math.sin(0.2 * i + 0.1))

# AttemptSubModule.forward with nn.Linear weights w_down.T / w_up.T and nn.LayerNorm(D).
pooled = torch.stack([t.max(0).values for t in tokens])  # [B, D]
x = torch.nn.functional.silu(pooled @ w_down) @ w_up
x = torch.nn.functional.layer_norm(x, (D,), ln_w, ln_b, eps=1e-5)
stacked = torch.cat([sources, target.unsqueeze(0)], 0)  # [K+1, R, D]
keys = stacked.max(1).values  # [K+1, D]
attention = torch.softmax(x @ keys.T / T, -1)  # [B, K+1]
mixed = torch.einsum("bp,pld->bld", attention, stacked) + target.unsqueeze(0)
loss = (C * mixed).sum()
loss.backward()


def show(name, t):
    flat = ", ".join(f"{v:.9e}" for v in t.detach().flatten().tolist())
    print(f"const {name}: [f64; {t.numel()}] = [{flat}];")


show("ATTENTION", attention)
show("MIXED", mixed)
show("GRAD_TARGET", target.grad)
show("GRAD_W_DOWN", w_down.grad)
show("GRAD_W_UP", w_up.grad)
show("GRAD_LN_WEIGHT", ln_w.grad)
show("GRAD_LN_BIAS", ln_b.grad)
