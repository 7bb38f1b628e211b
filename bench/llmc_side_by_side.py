#!/usr/bin/env python3
"""llm.c's CPU trainer (train_gpt2.c) and pipetrain's bench_model at one GPT shape, alternating.

    python3 bench/llmc_side_by_side.py --llmc /tmp/llm.c [--bench build-minimal/bench/bench_model]
        [--shape 4,256,256,4,4] [--vocab 256] [--pairs 3] [--steps 5] [--work /tmp/llmc_side]

A benchmark only, never in CI; standard library only. --llmc is a checkout of llm.c (a work tree,
never part of this repository). The script

1. writes LLMC/train_gpt2_bench.c, train_gpt2.c patched by PATCH (below, a sed command) so that
   the checkpoint, the token files, B, T and the step count come from environment variables, the
   sampling every 20 steps is off, and the training step's gpt2_forward is timed on its own; and
   builds it with `make train_gpt2_bench`: make's built-in rule with llm.c's own Makefile flags
   (CFLAGS -Ofast -march=native -fopenmp -DOMP, LDLIBS -lm -lgomp), as `make train_gpt2` uses;
2. writes, in --work, an llm.c checkpoint of the shape (header of 256 int32: 20240326, version 3,
   maxT = T, V, L, heads, C, V padded to a multiple of 128; then the 16 parameter tensors in
   llm.c's order) with GPT-2's initialisation (normal 0.02, the two residual projections
   0.02 / sqrt(2 L), biases 0, LayerNorm gains 1, the padded vocabulary rows 0), and train and
   validation token files (header of 256 int32: 20240520, version 1, count; uint16 tokens drawn
   uniformly from the vocabulary, as bench_model's batch is);
3. runs --pairs pairs, llm.c first in odd pairs and pipetrain first in even ones: llm.c with
   OMP_NUM_THREADS=2 (unless set), steps 0..--steps, step 0 (its allocations) left out;
   `bench_model --shape ... --vocab V --steps N --optimizer` (one warm-up step, N timed), with
   OPENBLAS_CORETYPE=SkylakeX unless set (see docs/performance.md, "This machine during these
   measurements");
4. prints, per pair and as medians, both sides' forward and whole-step ms and their ratios.

What is timed. llm.c's step: next batch, gpt2_forward (with targets: logits, softmax, loss),
zero_grad, gpt2_backward, gpt2_update (AdamW), its own "took ... ms". pipetrain's step: zero the
gradients, forward, backward, gradient norm and finite check, clip to norm 1, AdamW. Forward:
on both sides the training forward inside those steps (activations kept for backward, loss
included), so the forward is the one a training step pays for.
"""

import argparse
import array
import math
import os
import random
import re
import statistics
import struct
import subprocess
import sys

# The patch of train_gpt2.c, as one sed command (applied to a copy; `sed -e ... train_gpt2.c`).
PATCH = [
    "-e", r's|"gpt2_124M.bin"|getenv("LLMC_MODEL")|',
    "-e", r's|^\( *const char\* train_tokens = \).*|\1getenv("LLMC_TRAIN");|',
    "-e", r's|^\( *const char\* val_tokens = \).*|\1getenv("LLMC_VAL");|',
    "-e", r's|int B = 4;|int B = atoi(getenv("LLMC_B"));|',
    "-e", r's|int T = 64;|int T = atoi(getenv("LLMC_T"));|',
    "-e", r's|step <= 40;|step <= atoi(getenv("LLMC_STEPS"));|',
    "-e", r's|if (step > 0 && step % 20 == 0)|if (0)|',
    "-e", (r's|^\( *\)gpt2_forward(&model, train_loader.inputs, train_loader.targets, B, T);|'
           r'\1struct timespec f0, f1; clock_gettime(CLOCK_MONOTONIC, \&f0);\n&\n'
           r'\1clock_gettime(CLOCK_MONOTONIC, \&f1);|'),
    "-e", (r's|^\( *\)printf("step %d: train loss.*|&\n\1printf("step %d: forward took %f ms\\n", '
           r'step, ((f1.tv_sec - f0.tv_sec) + (f1.tv_nsec - f0.tv_nsec) / 1e9) * 1000);|'),
]
# Each must be in the patched source: a sed expression that matched nothing fails the run.
PATCHED_MARKS = ['getenv("LLMC_MODEL")', 'getenv("LLMC_TRAIN")', 'getenv("LLMC_VAL")',
                 'getenv("LLMC_B")', 'getenv("LLMC_T")', 'getenv("LLMC_STEPS")', "if (0)",
                 "clock_gettime(CLOCK_MONOTONIC, &f1)", "forward took"]


def build_llmc(llmc):
    src = os.path.join(llmc, "train_gpt2.c")
    patched = subprocess.run(["sed", *PATCH, src], check=True, capture_output=True,
                             text=True).stdout
    missing = [m for m in PATCHED_MARKS if m not in patched]
    if missing:
        sys.exit(f"llmc_side_by_side: the patch did not apply to {src}: missing {missing}")
    out = os.path.join(llmc, "train_gpt2_bench.c")
    if not os.path.exists(out) or open(out).read() != patched:
        with open(out, "w") as f:
            f.write(patched)
    r = subprocess.run(["make", "-C", llmc, "train_gpt2_bench"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llmc_side_by_side: building train_gpt2_bench failed:\n{r.stdout}{r.stderr}")
    compile_line = [l for l in r.stdout.splitlines() if "train_gpt2_bench.c" in l]
    return os.path.join(llmc, "train_gpt2_bench"), (compile_line[0] if compile_line else
                                                     "(up to date)")


def write_checkpoint(path, L, C, T, heads, V):
    Vp = (V + 127) // 128 * 128
    rng = random.Random(1)
    gauss = rng.gauss
    proj_std = 0.02 / math.sqrt(2 * L)
    # (elements, how to fill): "n" normal of the given std, a constant otherwise
    wte = array.array("f", (gauss(0.0, 0.02) for _ in range(V * C)))
    wte.extend(array.array("f", bytes(4 * (Vp - V) * C)))
    tensors = [
        wte,
        (T * C, "n", 0.02),          # wpe
        (L * C, "c", 1.0),           # ln1w
        (L * C, "c", 0.0),           # ln1b
        (L * 3 * C * C, "n", 0.02),  # qkvw
        (L * 3 * C, "c", 0.0),       # qkvb
        (L * C * C, "n", proj_std),  # attprojw
        (L * C, "c", 0.0),           # attprojb
        (L * C, "c", 1.0),           # ln2w
        (L * C, "c", 0.0),           # ln2b
        (L * 4 * C * C, "n", 0.02),  # fcw
        (L * 4 * C, "c", 0.0),       # fcb
        (L * 4 * C * C, "n", proj_std),  # fcprojw
        (L * C, "c", 0.0),           # fcprojb
        (C, "c", 1.0),               # lnfw
        (C, "c", 0.0),               # lnfb
    ]
    header = [0] * 256
    header[:8] = [20240326, 3, T, V, L, heads, C, Vp]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<256i", *header))
        for t in tensors:
            if isinstance(t, array.array):
                t.tofile(f)
                continue
            n, kind, x = t
            a = (array.array("f", (gauss(0.0, x) for _ in range(n))) if kind == "n" else
                 array.array("f", [x]) * n)
            a.tofile(f)
    os.replace(tmp, path)


def write_tokens(path, n, V, seed):
    rng = random.Random(seed)
    header = [0] * 256
    header[:3] = [20240520, 1, n]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<256i", *header))
        array.array("H", (rng.randrange(V) for _ in range(n))).tofile(f)
    os.replace(tmp, path)


def run_llmc(exe, env, steps):
    r = subprocess.run([exe], env=env, capture_output=True, text=True, cwd=os.path.dirname(exe))
    if r.returncode != 0:
        sys.exit(f"llmc_side_by_side: {exe} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    step_ms = {int(s): float(ms) for s, ms in
               re.findall(r"step (\d+): train loss \S+ \(took (\S+) ms\)", r.stdout)}
    fwd_ms = {int(s): float(ms) for s, ms in
              re.findall(r"step (\d+): forward took (\S+) ms", r.stdout)}
    losses = [float(x) for x in re.findall(r"step \d+: train loss (\S+)", r.stdout)]
    timed = range(1, steps + 1)  # step 0 allocates activations, gradients and AdamW state
    if any(s not in step_ms or s not in fwd_ms for s in timed):
        sys.exit(f"llmc_side_by_side: {exe} printed no time for some of steps 1..{steps}:\n"
                 f"{r.stdout}")
    return (statistics.fmean(fwd_ms[s] for s in timed),
            statistics.fmean(step_ms[s] for s in timed), losses)


def run_pipetrain(bench, shape, V, steps, env):
    cmd = [bench, "--shape", shape, "--vocab", str(V), "--steps", str(steps), "--optimizer"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"llmc_side_by_side: {' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    first = r.stdout.splitlines()[0]
    row = [l.split() for l in r.stdout.splitlines() if l.startswith("custom ")]
    if len(row) != 1:
        sys.exit(f"llmc_side_by_side: no 'custom' row in bench_model's output:\n{r.stdout}")
    # columns: config layers heads channels seqxB params ms/step fwd-ms tokens/s ...
    return float(row[0][7]), float(row[0][6]), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llmc", required=True, help="llm.c work tree (train_gpt2.c, Makefile)")
    ap.add_argument("--bench", default="build-minimal/bench/bench_model")
    ap.add_argument("--shape", default="4,256,256,4,4", help="L,C,T,B,heads")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps a run")
    ap.add_argument("--work", default="/tmp/llmc_side")
    args = ap.parse_args()
    try:
        L, C, T, B, H = (int(x) for x in args.shape.split(","))
    except ValueError:
        sys.exit(f"llmc_side_by_side: --shape '{args.shape}' must be L,C,T,B,heads")
    if min(L, C, T, B, H) <= 0 or C % H:
        sys.exit(f"llmc_side_by_side: --shape {args.shape}: five positive integers with C "
                 f"divisible by heads expected")
    if not 2 <= args.vocab <= 65536:
        sys.exit(f"llmc_side_by_side: --vocab {args.vocab}: 2..65536 expected (uint16 tokens)")
    if args.pairs < 1 or args.steps < 1:
        sys.exit(f"llmc_side_by_side: --pairs {args.pairs}, --steps {args.steps}: >= 1 expected")
    os.makedirs(args.work, exist_ok=True)
    exe, compile_line = build_llmc(os.path.abspath(args.llmc))
    model = os.path.join(args.work, f"model_L{L}_C{C}_T{T}_H{H}_V{args.vocab}.bin")
    if not os.path.exists(model):
        write_checkpoint(model, L, C, T, H, args.vocab)
    train = os.path.join(args.work, f"train_V{args.vocab}.bin")
    val = os.path.join(args.work, f"val_V{args.vocab}.bin")
    n_tokens = 16 * B * T + 1
    for path, seed in ((train, 2), (val, 3)):
        if not os.path.exists(path) or os.path.getsize(path) != 1024 + 2 * n_tokens:
            write_tokens(path, n_tokens, args.vocab, seed)

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
    llmc_env = dict(env, LLMC_MODEL=model, LLMC_TRAIN=train, LLMC_VAL=val, LLMC_B=str(B),
                    LLMC_T=str(T), LLMC_STEPS=str(args.steps))
    print(f"llm.c: {compile_line}")
    print(f"llm.c: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"pipetrain: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
    print(f"shape L={L} C={C} T={T} B={B} heads={H}, vocabulary {args.vocab}; {args.pairs} pairs "
          f"of {args.steps} timed steps\n")
    print(f"{'pair':>4} {'first':>9} {'llm.c fwd':>10} {'pt fwd':>8} {'llm.c/pt':>9} "
          f"{'llm.c step':>11} {'pt step':>8} {'llm.c/pt':>9}")
    fwd_ratio, step_ratio, rows = [], [], []
    blas_line = ""
    for p in range(1, args.pairs + 1):
        order = ("llmc", "pt") if p % 2 == 1 else ("pt", "llmc")
        res = {}
        for side in order:
            if side == "llmc":
                res[side] = run_llmc(exe, llmc_env, args.steps)
            else:
                fwd, step, blas_line = run_pipetrain(args.bench, args.shape, args.vocab,
                                                     args.steps, env)
                res[side] = (fwd, step)
        (lf, ls, losses), (pf, ps) = res["llmc"], res["pt"]
        rows.append((lf, pf, ls, ps))
        fwd_ratio.append(lf / pf)
        step_ratio.append(ls / ps)
        print(f"{p:>4} {'llm.c' if order[0] == 'llmc' else 'pipetrain':>9} {lf:>10.1f} {pf:>8.1f} "
              f"{lf / pf:>9.3f} {ls:>11.1f} {ps:>8.1f} {ls / ps:>9.3f}", flush=True)
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    print(f"{'median':>14} {med[0]:>10.1f} {med[1]:>8.1f} {statistics.median(fwd_ratio):>9.3f} "
          f"{med[2]:>11.1f} {med[3]:>8.1f} {statistics.median(step_ratio):>9.3f}")
    print(f"\npipetrain: {blas_line}")
    print(f"llm.c train loss, last run, steps 0..{args.steps}: "
          + " ".join(f"{x:.4f}" for x in losses) + f"  (ln V = {math.log(args.vocab):.4f})")
    print("ratios are llm.c ms / pipetrain ms: above 1, pipetrain is faster")


if __name__ == "__main__":
    main()
