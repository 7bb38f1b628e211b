#!/usr/bin/env python3
"""pipetrain next to PyTorch eager on the CPU: the same GPT, the same weights, the same batch.

    python3 bench/pytorch_side_by_side.py [--bench build-cpu/bench/bench_model] [--steps 20]
                                          [--vocab 256] [--config medium]
                                          [--show STEP ...]
    python3 bench/pytorch_side_by_side.py --torch-only [--device cuda] [--dtype bf16]
                                          [--compile] [--shape L,C,T,B,H] [--vocab V]
                                          [--accum K] [--steps N]

Runs `bench_model --dump DIR --steps N` (pipetrain: whole training steps, forward, backward,
gradient norm, clip to 1, AdamW lr 1e-4, on one batch), then builds the same GPT-2 in PyTorch
from the dumped initial weights and runs the same N + 1 steps with the same thread count:

  - the loss of every step, pipetrain against PyTorch (fp32 on both sides, so they agree to
    fp32 rounding, growing slowly over the steps): an independent check of every kernel and of
    the optimizer;
  - training tokens/s of both, measured one after the other in this run, and their ratio.

With --torch-only it is the PyTorch baseline alone, on any device PyTorch has (the GPU check,
tools/gpu-check, runs it where pipetrain's own GPU trainer does not exist yet): the same GPT-2
code with GPT-2's initialisation and random tokens, attention through
F.scaled_dot_product_attention (causal), optionally under bf16 autocast (fp32 weights and
optimizer, as pipetrain's CUDA path keeps them; TF32 allowed for what stays fp32 on CUDA),
K microbatches of B a step, AdamW (fused on CUDA), clipping to 1. It prints the tokens/s and
model FLOP/s of eager PyTorch and, with --compile, of torch.compile, and the MFU where the
device's peak is known (or --peak-tflops). Model FLOPs per token: 6 N + 12 L C T, N the
parameters without the position embedding (nanoGPT's estimate_mfu; llm.c counts 6 N + 6 L C T
with the position embedding in N, 6% less at GPT-2 124M).

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


def adamw(p, decay, **options):
    """AdamW as bench_model runs it: lr 1e-4, betas 0.9/0.95, eps 1e-8, decay 0.1 where
    decay[name]."""
    groups = [{"params": [v for k, v in p.items() if decay[k]], "weight_decay": 0.1},
              {"params": [v for k, v in p.items() if not decay[k]], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, **options)


def gpt_loss(p, idx, targets, layers, heads, sdpa=False):
    """GPT-2 as pipetrain computes it (src/nn: LayerNorm eps 1e-5, tanh GELU, tied wte);
    attention as pipetrain's CPU kernel does it, or (sdpa) through PyTorch's fused kernel."""
    b, t = idx.shape
    c = p["wte"].shape[1]
    x = p["wte"][idx] + p["wpe"][:t]
    for i in range(layers):
        h = f"h.{i}."
        y = F.layer_norm(x, (c,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], 1e-5)
        qkv = F.linear(y, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])
        q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in qkv.split(c, dim=2))
        if sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(c // heads)
            mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).reshape(b, t, c)
        x = x + F.linear(y, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        y = F.layer_norm(x, (c,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], 1e-5)
        y = F.gelu(F.linear(y, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"]),
                   approximate="tanh")
        x = x + F.linear(y, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (c,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)
    logits = x @ p.get("lm_head.weight", p["wte"]).t()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


# Dense bf16 peaks (FLOP/s) by a part of the device's name, for the MFU; fp32 runs are reported
# against the same figure. Names with a part in PEAK_UNKNOWN (MIG slices, NVL boards, whose peaks
# differ) and anything else need --peak-tflops.
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H200": 989e12, "H100 PCIe": 756e12,
             "A100": 312e12}
PEAK_UNKNOWN = ("MIG", "NVL")


def gpt2_init(layers, c, t, vocab, device):
    """GPT-2's initialisation under the names pipetrain's dump uses; decay on the matrices."""
    g = torch.Generator().manual_seed(1234)
    p = {}

    def normal(shape, std):
        return torch.empty(shape).normal_(0.0, std, generator=g)

    p["wte"] = normal((vocab, c), 0.02)
    p["wpe"] = normal((t, c), 0.02)
    for i in range(layers):
        h = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            p[h + ln + ".weight"], p[h + ln + ".bias"] = torch.ones(c), torch.zeros(c)
        for name, out, inp, std in (("attn.c_attn", 3 * c, c, 0.02),
                                    ("attn.c_proj", c, c, 0.02 / math.sqrt(2 * layers)),
                                    ("mlp.c_fc", 4 * c, c, 0.02),
                                    ("mlp.c_proj", c, 4 * c, 0.02 / math.sqrt(2 * layers))):
            p[h + name + ".weight"] = normal((out, inp), std)
            p[h + name + ".bias"] = torch.zeros(out)
    p["ln_f.weight"], p["ln_f.bias"] = torch.ones(c), torch.zeros(c)
    p = {k: v.to(device).requires_grad_(True) for k, v in p.items()}
    return p, {k: v.dim() == 2 for k, v in p.items()}


def torch_only(args):
    """The PyTorch baseline alone (see the module's text); returns the exit status."""
    layers, c, t, batch, heads = (int(x) for x in args.shape.split(","))
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("pytorch_side_by_side: --device cuda, but this PyTorch sees no CUDA device",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    p, decay = gpt2_init(layers, c, t, args.vocab, dev)
    n_params = sum(v.numel() for k, v in p.items() if k != "wpe")
    tokens_per_step = batch * t * args.accum
    flops_per_step = (6 * n_params + 12 * layers * c * t) * tokens_per_step
    name = torch.cuda.get_device_name(dev) if cuda else "CPU"
    known = cuda and not any(u in name for u in PEAK_UNKNOWN)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if known and k in name), None)
    g = torch.Generator().manual_seed(99)
    data = torch.randint(0, args.vocab, (args.accum, 2, batch, t), generator=g).to(dev)

    opt = adamw(p, decay, **({"fused": True} if cuda else {}))

    def loss_fn(idx, targets):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            return gpt_loss(p, idx, targets, layers, heads, sdpa=True)

    def run(fn, label):
        times, losses = [], []
        for _ in range(args.steps + args.warmup):
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            total = 0.0
            for k in range(args.accum):
                loss = fn(data[k, 0], data[k, 1]) / args.accum
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
            opt.step()
            losses.append(float(total))  # waits for the step
            times.append(time.perf_counter() - t0)
        step_s = sorted(times[args.warmup:])[len(times[args.warmup:]) // 2]
        mfu = f", MFU {flops_per_step / step_s / peak:.1%}" if peak else ""
        print(f"PyTorch {label}: {tokens_per_step / step_s:.0f} tokens/s, "
              f"{flops_per_step / step_s / 1e12:.2f} TFLOP/s{mfu} (median of {args.steps} steps "
              f"after {args.warmup} warm-up, the first {times[0]:.1f} s; "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f})", flush=True)
        return losses

    print(f"GPT {layers} layers, C={c}, T={t}, {heads} heads, vocabulary {args.vocab}, "
          f"{n_params / 1e6:.1f}M parameters (without wpe); {args.accum} x {batch} x {t} = "
          f"{tokens_per_step} tokens a step; {name}, {args.dtype}, PyTorch {torch.__version__}"
          + (f", {torch.get_num_threads()} threads" if not cuda else "")
          + (f"; peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    state = {k: v.detach().clone() for k, v in p.items()}
    eager = run(loss_fn, "eager")
    if args.compile:
        with torch.no_grad():  # the same start as eager
            for k, v in p.items():
                v.copy_(state[k])
        opt.state.clear()
        compiled = run(torch.compile(loss_fn), "torch.compile")
        # The first loss checks the compiled forward; the last, after every step's backward and
        # update, the rest (looser: bf16 rounding in other places moves the two apart).
        for which, tol in ((0, 2e-3), (-1, 1e-2)):
            if abs(compiled[which] - eager[which]) > tol * abs(eager[which]):
                when = "first" if which == 0 else "last"
                print(f"pytorch_side_by_side: eager and compiled {when} losses differ: "
                      f"{eager[which]} and {compiled[which]}", file=sys.stderr)
                return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build-cpu/bench/bench_model")
    ap.add_argument("--steps", type=int, default=20,
                    help="timed steps (one warm-up step more; with --torch-only, --warmup more)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--config", default="medium", choices=["small", "medium"])
    ap.add_argument("--show", type=int, nargs="*", default=[],
                    help="steps whose losses are printed besides 0, 1, 2, every 10th and the last")
    ap.add_argument("--torch-only", action="store_true",
                    help="the PyTorch baseline alone, on --device (see above)")
    ap.add_argument("--device", default="cpu", help="with --torch-only: cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="with --torch-only: bf16 autocast of the forward")
    ap.add_argument("--compile", action="store_true", help="with --torch-only: also torch.compile")
    ap.add_argument("--shape", default="4,256,128,8,8",
                    help="with --torch-only: L,C,T,B,heads (GPT-2 124M: 12,768,1024,B,12)")
    ap.add_argument("--accum", type=int, default=1, help="with --torch-only: microbatches a step")
    ap.add_argument("--warmup", type=int, default=3, help="with --torch-only: untimed steps")
    ap.add_argument("--threads", type=int, default=0, help="with --torch-only on the CPU")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="with --torch-only: the device's peak for the MFU")
    args = ap.parse_args()
    if args.torch_only:
        return torch_only(args)
    shapes = {"small": (2, 4, 64, 8), "medium": (4, 8, 256, 8)}  # layers, heads, C, B
    layers, heads, _, batch = shapes[args.config]

    with tempfile.TemporaryDirectory() as dump:
        subprocess.run([args.bench, "--steps", str(args.steps), "--vocab", str(args.vocab),
                        "--dump", dump], check=True, stdout=subprocess.DEVNULL)
        p, decay, tokens, want, pt_tokens_s, threads = load(dump, args.config)

    torch.set_num_threads(threads)
    n = tokens.numel() // 2
    idx, targets = tokens[:n].view(batch, -1), tokens[n:].view(batch, -1)
    opt = adamw(p, decay)
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
