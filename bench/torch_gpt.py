#!/usr/bin/python3
"""The same GPT and batch as partita's 124M benchmark, timed in PyTorch (CPU, fp32):
forward + backward + AdamW per step, on the same number of threads.
usage: torch_gpt.py L C NH Vp T B THREADS STEPS  -> prints 'torch_tokens_per_s X'"""
import math
import sys
import time

import torch
import torch.nn.functional as F

L, C, NH, Vp, T, B, THREADS, STEPS = (int(a) for a in sys.argv[1:9])
torch.set_num_threads(THREADS)
torch.manual_seed(0)
H = 4 * C


def P(*shape, std=0.02):
    return (torch.randn(*shape) * std).requires_grad_()


wte, wpe = P(Vp, C), P(1024, C)
layers = []
for _ in range(L):
    layers.append(dict(l1w=torch.ones(C, requires_grad=True), l1b=torch.zeros(C, requires_grad=True),
                       qkvw=P(C, 3 * C), qkvb=torch.zeros(3 * C, requires_grad=True),
                       pw=P(C, C), pb=torch.zeros(C, requires_grad=True),
                       l2w=torch.ones(C, requires_grad=True), l2b=torch.zeros(C, requires_grad=True),
                       fw=P(C, H), fb=torch.zeros(H, requires_grad=True),
                       fpw=P(H, C), fpb=torch.zeros(C, requires_grad=True)))
lfw, lfb = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
params = [wte, wpe, lfw, lfb] + [t for l in layers for t in l.values()]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, foreach=True)


mask = torch.ones(T, T, dtype=torch.bool).triu(1)


def step(idx, tgt):
    x = wte[idx] + wpe[:T]
    for p in layers:
        h = F.layer_norm(x, (C,), p["l1w"], p["l1b"])
        q, k, v = torch.addmm(p["qkvb"], h.view(-1, C), p["qkvw"]).view(B, T, 3 * C).split(C, dim=-1)
        q, k, v = (t.reshape(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        # Debian's torch 1.13 has no scaled_dot_product_attention: the plain causal form.
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // NH))
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B * T, C)
        x = x + torch.addmm(p["pb"], y, p["pw"]).view(B, T, C)
        h = F.layer_norm(x, (C,), p["l2w"], p["l2b"]).view(-1, C)
        h = F.gelu(torch.addmm(p["fb"], h, p["fw"]), approximate="tanh")
        x = x + torch.addmm(p["fpb"], h, p["fpw"]).view(B, T, C)
    x = F.layer_norm(x, (C,), lfw, lfb)
    loss = F.cross_entropy((x @ wte.T).view(-1, Vp), tgt.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


idx = torch.randint(0, 256, (B, T))
tgt = torch.randint(0, 256, (B, T))
times = []
for s in range(STEPS + 1):
    t0 = time.perf_counter()
    step(idx, tgt)
    if s > 0:  # the first step allocates and warms up
        times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
print(f"torch_step_s {med:.4f}")
print(f"torch_tokens_per_s {B * T / med:.1f}")
print(f"torch_threads {torch.get_num_threads()}")
