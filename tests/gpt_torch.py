"""GPT-2 in PyTorch over Partita's weight layout: the reference the tests compare against."""
import math

import numpy as np
import torch
import torch.nn.functional as F


def gpt_forward(p, idx, L, NH, V):
    """GPT-2 with HF names; linear weights are (in, out) as HF Conv1D."""
    Bq, Tq = idx.shape
    x = p["wte.weight"][idx] + p["wpe.weight"][:Tq]
    C = x.shape[-1]
    HS = C // NH
    mask = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    for l in range(L):
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_1.weight"], p[f"h.{l}.ln_1.bias"], eps=1e-5)
        qkv = h @ p[f"h.{l}.attn.c_attn.weight"] + p[f"h.{l}.attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(Bq, Tq, NH, HS).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bq, Tq, C)
        x = x + y @ p[f"h.{l}.attn.c_proj.weight"] + p[f"h.{l}.attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_2.weight"], p[f"h.{l}.ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ p[f"h.{l}.mlp.c_fc.weight"] + p[f"h.{l}.mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ p[f"h.{l}.mlp.c_proj.weight"] + p[f"h.{l}.mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    return x @ p["wte.weight"].T


def loss_of(logits, targets, V):
    return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))


def load_params(group):
    return {k: torch.tensor(np.array(group[k]), requires_grad=True) for k in group}


