#!/usr/bin/env python3
"""pipetrain under mpirun next to torch.distributed.pipelining on the CPU: same GPT, same schedule.

    python3 bench/torch_pipelining_side_by_side.py [--bench build-cpu/bench/bench_pipeline]
        [--schedules 1f1b interleaved-1f1b zb-v] [--steps 20] [--repeats 3] [--threads 1]
        [--layers 4] [--heads 4] [--channels 128] [--seq 64] [--batch 8] [--microbatches 4]

For every schedule and repeat, one after the other (the order of the two sides alternating from
repeat to repeat):

  - pipetrain: `mpirun -n 2 bench_pipeline --transport mpi --schedule S --dump DIR`: 2 processes,
    the GPT cut at fixed layer counts into the schedule's stages, AdamW (betas 0.9/0.95, eps
    1e-8, weight decay 0.1 on matrices), constant lr, gradient norm clipped to 1, one warm-up
    step and N timed steps on a fresh batch each; it writes every stage's initial weights, the
    batches, the losses and tokens/s (see bench/bench_pipeline.cpp);
  - PyTorch: 2 processes (torch.multiprocessing, gloo), each building its stages from those
    weights as torch.distributed.pipelining PipelineStages, driven by Schedule1F1B,
    ScheduleInterleaved1F1B or ScheduleZBVZeroBubble with the same microbatches, on the same
    batches. The tied token embedding (a copy in the first and in the last stage, as pipetrain
    holds it) gets the sum of both copies' gradients before the step: an all-reduce between the
    two ranks, or a local sum when one rank holds both (ZB-V). One all-reduce then carries the
    sum of squares of the gradients (the tied matrix counted once) and the loss, as in
    pipetrain's Executor; clip to 1, torch.optim.AdamW with the same settings.

Both sides use --threads threads per process (PIPETRAIN_CPU_THREADS and OPENBLAS_NUM_THREADS;
torch.set_num_threads) and time the same thing: every step's wall time on rank 0, from a
barrier to the optimizer step done. Printed: the losses of both sides at a few steps and the
largest difference, and per schedule the tokens/s of the median step (the machine's other load
stalls a few steps: the median moves little), the ratio of each pair of runs (also from the
mean step) and their median.

PyTorch is a benchmark dependency only (never in CI): `pip install torch` in a virtual
environment. Open MPI run as root needs OMPI_ALLOW_RUN_AS_ROOT=1 and
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 in the environment.
"""
import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleInterleaved1F1B,
                                          ScheduleZBVZeroBubble)

SCHEDULES = ["1f1b", "interleaved-1f1b", "zb-v"]


def read_stage(dump, s):
    """Stage s's parameters (name -> tensor, pipetrain's order) and weight-decay flags."""
    raw = open(os.path.join(dump, f"stage{s}.params"), "rb").read()
    params, decay, at = {}, {}, 0
    for line in open(os.path.join(dump, f"stage{s}.manifest")):
        name, numel, wd, *dims = line.split()
        numel = int(numel)
        t = torch.frombuffer(bytearray(raw[at:at + 4 * numel]), dtype=torch.float32)
        params[name] = t.reshape([int(d) for d in dims]).clone()
        decay[name] = wd == "1"
        at += 4 * numel
    assert at == len(raw), f"stage{s}: manifest and params disagree"
    return params, decay


class GptStage(torch.nn.Module):
    """Consecutive GPT layers as pipetrain computes them (LayerNorm eps 1e-5, tanh GELU): the
    embedding when the stage holds wpe, blocks h.i in order, the head when it holds ln_f."""

    def __init__(self, tensors, heads):
        super().__init__()
        self.names = list(tensors)
        self.p = torch.nn.ParameterList(torch.nn.Parameter(t) for t in tensors.values())
        self.blocks = sorted({int(n.split(".")[1]) for n in self.names if n.startswith("h.")})
        self.heads = heads

    def w(self, name):
        return self.p[self.names.index(name)]

    def forward(self, x):
        w = self.w
        if "wpe" in self.names:
            x = w("wte")[x] + w("wpe")[:x.shape[1]]
        b, t, c = x.shape
        for i in self.blocks:
            h = f"h.{i}."
            y = F.layer_norm(x, (c,), w(h + "ln_1.weight"), w(h + "ln_1.bias"), 1e-5)
            qkv = F.linear(y, w(h + "attn.c_attn.weight"), w(h + "attn.c_attn.bias"))
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in qkv.split(c, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(b, t, c)
            x = x + F.linear(y, w(h + "attn.c_proj.weight"), w(h + "attn.c_proj.bias"))
            y = F.layer_norm(x, (c,), w(h + "ln_2.weight"), w(h + "ln_2.bias"), 1e-5)
            y = F.gelu(F.linear(y, w(h + "mlp.c_fc.weight"), w(h + "mlp.c_fc.bias")),
                       approximate="tanh")
            x = x + F.linear(y, w(h + "mlp.c_proj.weight"), w(h + "mlp.c_proj.bias"))
        if "ln_f.weight" in self.names:
            x = F.layer_norm(x, (c,), w("ln_f.weight"), w("ln_f.bias"), 1e-5)
            x = x @ w("wte").t()
        return x


def cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def torch_rank(rank, args, dump, port, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # The stages pipetrain placed on this rank (1F1B: 0 | 1; interleaved: 0 2 | 1 3; ZB-V:
    # 0 3 | 1 2), the placement torch's schedule of the same name expects.
    stages_here = [int(s) for s in open(os.path.join(dump, "placement")).readlines()[rank].split()]
    num_stages = 2 * len(stages_here)
    modules, stages, groups = [], [], {True: [], False: []}
    for s in stages_here:
        tensors, decay = read_stage(dump, s)
        m = GptStage(tensors, args.heads)
        modules.append(m)
        stages.append(PipelineStage(m, s, num_stages, torch.device("cpu")))
        for name, p in zip(m.names, m.p):
            groups[decay[name]].append(p)
    if args.schedule == "1f1b":
        schedule = Schedule1F1B(stages[0], args.microbatches, loss_fn=cross_entropy)
    elif args.schedule == "interleaved-1f1b":
        schedule = ScheduleInterleaved1F1B(stages, args.microbatches, loss_fn=cross_entropy)
    else:
        schedule = ScheduleZBVZeroBubble(stages, args.microbatches, loss_fn=cross_entropy)
    opt = torch.optim.AdamW([{"params": groups[True], "weight_decay": 0.1},
                             {"params": groups[False], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    tied = [m.w("wte") for m in modules if "wte" in m.names]
    first, last = 0 in stages_here, num_stages - 1 in stages_here
    raw = open(os.path.join(dump, "tokens"), "rb").read()
    n = args.batch * args.seq
    losses, seconds = [], []
    for step in range(args.steps + 1):
        at = step * 2 * n * 4
        both = torch.frombuffer(bytearray(raw[at:at + 2 * n * 4]), dtype=torch.int32).long()
        x, y = both[:n].view(args.batch, args.seq), both[n:].view(args.batch, args.seq)
        # As pipetrain's step: a barrier first (the Executor's barrier_at_step_start), then
        # until the optimizer has stepped; the all-reduce below ends every rank's step together.
        start = time.perf_counter()
        dist.barrier()
        opt.zero_grad(set_to_none=False)
        mb_losses = []
        inputs = (x,) if first else ()
        kwargs = {"target": y, "losses": mb_losses} if last else {}
        schedule.step(*inputs, return_outputs=False, **kwargs)
        # The tied wte: every copy takes the sum of all copies' gradients (one copy here: the
        # other is on the other rank; two: both here, ZB-V's rank 0; none: ZB-V's rank 1).
        if len(tied) == 1:
            dist.all_reduce(tied[0].grad)
        elif len(tied) == 2:
            tied[0].grad.add_(tied[1].grad)
            tied[1].grad.copy_(tied[0].grad)
        grads = [p.grad for m in modules for p in m.p]
        sumsq = torch.nn.utils.get_total_norm(grads).double() ** 2
        if len(tied) == 2 or (tied and 0 not in stages_here):
            # Each tied copy once: the copy of stage 0 counts, the last stage's does not.
            sumsq -= tied[-1].grad.double().pow(2).sum()
        red = torch.stack([sumsq, sum(l.detach().double() for l in mb_losses)
                           if mb_losses else torch.zeros((), dtype=torch.float64)])
        dist.all_reduce(red)
        torch.nn.utils.clip_grads_with_norm_([p for m in modules for p in m.p], 1.0,
                                             red[0].sqrt())
        opt.step()
        losses.append(red[1].item() / args.microbatches)
        seconds.append(time.perf_counter() - start)
    if rank == 0:
        timed = seconds[1:]
        with open(out, "w") as f:
            f.write(f"{n / statistics.median_low(timed)} {len(timed) * n / sum(timed)}\n"
                    + "".join(f"{l!r}\n" for l in losses))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pipetrain(args, dump):
    env = dict(os.environ, PIPETRAIN_CPU_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    cmd = shlex.split(args.mpirun) + [
        args.bench, "--transport", "mpi", "--schedule", args.schedule, "--dump", dump,
        "--steps", str(args.steps), "--layers", str(args.layers), "--heads", str(args.heads),
        "--channels", str(args.channels), "--seq", str(args.seq), "--batch", str(args.batch),
        "--microbatches", str(args.microbatches), "--lr", str(args.lr)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    median, mean, threads = open(os.path.join(dump, "speed")).read().split()
    assert int(threads) == args.threads, f"pipetrain ran {threads} threads, not {args.threads}"
    return (float(median), float(mean)), [float(x) for x in open(os.path.join(dump, "losses"))]


def run_torch(args, dump):
    out = os.path.join(dump, "torch")
    mp.spawn(torch_rank, args=(args, dump, free_port(), out), nprocs=2, join=True)
    lines = open(out).read().split()
    return (float(lines[0]), float(lines[1])), [float(x) for x in lines[2:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build-cpu/bench/bench_pipeline")
    ap.add_argument("--mpirun", default="mpirun --oversubscribe -n 2",
                    help="launcher of the pipetrain side (2 processes)")
    ap.add_argument("--schedules", nargs="+", default=SCHEDULES, choices=SCHEDULES)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (one warm-up step more)")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs per schedule")
    ap.add_argument("--threads", type=int, default=1, help="threads per process, both sides")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    print(f"GPT {args.layers} blocks, {args.heads} heads, C={args.channels}, T={args.seq}, "
          f"B={args.batch}, M={args.microbatches}, vocabulary 256, lr {args.lr}; P=2 processes, "
          f"{args.threads} thread(s) each; {args.steps} timed steps + 1 warm-up, "
          f"{args.repeats} paired runs; PyTorch {torch.__version__}\n")
    rows, failed = [], False
    for schedule in args.schedules:
        args.schedule = schedule
        ratios, mean_ratios, ours, theirs, worst, curves = [], [], [], [], 0.0, None
        with tempfile.TemporaryDirectory() as dump:
            for r in range(args.repeats):
                # bench_pipeline writes the same weights and batches every run; the first
                # run makes them, and the order of the two sides alternates.
                if r % 2 == 0:
                    a, la = run_pipetrain(args, dump)
                    b, lb = run_torch(args, dump)
                else:
                    b, lb = run_torch(args, dump)
                    a, la = run_pipetrain(args, dump)
                ours.append(a[0])
                theirs.append(b[0])
                ratios.append(a[0] / b[0])
                mean_ratios.append(a[1] / b[1])
                worst = max(worst, max(abs(u - v) for u, v in zip(la, lb)))
                curves = curves or (la, lb)
        la, lb = curves
        print(f"{schedule}: step  pipetrain loss     PyTorch loss       |difference|")
        for s in sorted({0, 1, len(la) // 5, len(la) // 2, len(la) - 1}):
            print(f"{'':>{len(schedule)}}  {s:>5} {la[s]:>16.9f} {lb[s]:>16.9f} "
                  f"{abs(la[s] - lb[s]):>14.3e}")
        print(f"{'':>{len(schedule)}}  paired ratios pipetrain/PyTorch in run order, median "
              "step: " + " ".join(f"{x:.2f}" for x in ratios))
        print(f"{'':>{len(schedule)}}  the same from the mean step: "
              + " ".join(f"{x:.2f}" for x in mean_ratios))
        rows.append((schedule, statistics.median(ours), statistics.median(theirs),
                     statistics.median(ratios), min(ratios), max(ratios),
                     statistics.median(mean_ratios), worst))
        failed |= worst > 1e-4 * max(1.0, abs(la[0]))
    print(f"\ntokens/s of the median step, median over the runs; ratio pipetrain/PyTorch: median "
          f"of the paired runs (min..max), and from the mean step")
    print(f"{'schedule':<18} {'pipetrain':>10} {'PyTorch':>10} {'ratio (min..max)':>20} "
          f"{'mean-step ratio':>16} {'max |loss diff|':>16}")
    for name, a, b, ratio, lo, hi, mean_ratio, worst in rows:
        print(f"{name:<18} {a:>10.0f} {b:>10.0f} {ratio:>7.2f} ({lo:.2f}..{hi:.2f}) "
              f"{mean_ratio:>16.2f} {worst:>16.3e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
