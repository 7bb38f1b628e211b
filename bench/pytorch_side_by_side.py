#!/usr/bin/env python3
"""pipetrain next to PyTorch eager on the CPU: the same GPT, the same weights, the same batch.

    python3 bench/pytorch_side_by_side.py [--bench build-cpu/bench/bench_model] [--steps 20]
                                          [--vocab 256] [--config medium]
                                          [--show STEP ...]

Runs `bench_model --dump DIR --steps N` (pipetrain: whole training steps, forward, backward,
gradient norm, clip to 1, AdamW lr 1e-4, on one batch), then builds the same GPT-2 in PyTorch
from the dumped initial weights and runs the same N + 1 steps with the same thread count:

  - the loss of every step, pipetrain against PyTorch (fp32 on both sides, so they agree to
    fp32 rounding, growing slowly over the steps): an independent check of every kernel and of
    the optimizer;
  - training tokens/s of both, measured one after the other in this run, and their ratio.

PyTorch is a benchmark dependency only (never in CI): `pip install torch` in a virtual
environment. Nothing here downloads weights or data.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def load(dump, config):
    """Parameters (name -> tensor, in pipetrain's order), decay flags and the batch."""
    params, decay = {}, {}
    raw = open(os.path.join(dump, config + ".params"), "rb").read()
    at = 0
    for line in open(os.path.join(dump, config + ".manifest")):
        name, numel, wd, *dims = line.split()
        numel = int(numel)
        t = torch.frombuffer(bytearray(raw[at:at + 4 * numel]), dtype=torch.float32)
        params[name] = t.reshape([int(d) for d in dims]).clone().requires_grad_(True)
        decay[name] = wd == "1"
        at += 4 * numel
    assert at == len(raw), "manifest and params disagree"
    tokens = torch.frombuffer(bytearray(open(os.path.join(dump, config + ".tokens"), "rb").read()),
                              dtype=torch.int32).long()
    losses = [float(x) for x in open(os.path.join(dump, config + ".losses"))]
    tokens_per_s, threads = open(os.path.join(dump, config + ".speed")).read().split()
    return params, decay, tokens, losses, float(tokens_per_s), int(threads)


def gpt_loss(p, idx, targets, layers, heads):
    """GPT-2 as pipetrain computes it (src/nn: LayerNorm eps 1e-5, tanh GELU, tied wte)."""
    b, t = idx.shape
    c = p["wte"].shape[1]
    x = p["wte"][idx] + p["wpe"][:t]
    for i in range(layers):
        h = f"h.{i}."
        y = F.layer_norm(x, (c,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], 1e-5)
        qkv = F.linear(y, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])
        q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in qkv.split(c, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // heads)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + F.linear(y, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        y = F.layer_norm(x, (c,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], 1e-5)
        y = F.gelu(F.linear(y, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"]),
                   approximate="tanh")
        x = x + F.linear(y, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (c,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)
    logits = x @ p.get("lm_head.weight", p["wte"]).t()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build-cpu/bench/bench_model")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (one warm-up step more)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--config", default="medium", choices=["small", "medium"])
    ap.add_argument("--show", type=int, nargs="*", default=[],
                    help="steps whose losses are printed besides 0, 1, 2, every 10th and the last")
    args = ap.parse_args()
    shapes = {"small": (2, 4, 64, 8), "medium": (4, 8, 256, 8)}  # layers, heads, C, B
    layers, heads, _, batch = shapes[args.config]

    with tempfile.TemporaryDirectory() as dump:
        subprocess.run([args.bench, "--steps", str(args.steps), "--vocab", str(args.vocab),
                        "--dump", dump], check=True, stdout=subprocess.DEVNULL)
        p, decay, tokens, want, pt_tokens_s, threads = load(dump, args.config)

    torch.set_num_threads(threads)
    n = tokens.numel() // 2
    idx, targets = tokens[:n].view(batch, -1), tokens[n:].view(batch, -1)
    groups = [{"params": [v for k, v in p.items() if decay[k]], "weight_decay": 0.1},
              {"params": [v for k, v in p.items() if not decay[k]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    got, times = [], []
    for _ in range(args.steps + 1):  # the first is the warm-up, as in bench_model
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = gpt_loss(p, idx, targets, layers, heads)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        got.append(loss.item())
    torch_tokens_s = n / (sum(times[1:]) / args.steps)

    print(f"{args.config} GPT ({layers} layers, {heads} heads, vocabulary {args.vocab}, "
          f"{n} tokens a step), {threads} threads, PyTorch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    print(f"{'step':>4} {'pipetrain loss':>18} {'PyTorch loss':>18} {'|difference|':>14}")
    worst = 0.0
    for s, (a, b) in enumerate(zip(want, got)):
        worst = max(worst, abs(a - b))
        if s < 3 or s == len(got) - 1 or s % 10 == 0 or s in args.show:
            print(f"{s:>4} {a:>18.9f} {b:>18.9f} {abs(a - b):>14.3e}")
    print(f"\nlargest loss difference over {len(got)} steps: {worst:.3e}")
    print(f"training tokens/s: pipetrain {pt_tokens_s:.0f}, PyTorch eager {torch_tokens_s:.0f}, "
          f"ratio pipetrain/PyTorch {pt_tokens_s / torch_tokens_s:.2f}")
    return 0 if worst < 1e-4 * max(1.0, abs(want[0])) else 1


if __name__ == "__main__":
    sys.exit(main())
