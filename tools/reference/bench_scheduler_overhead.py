"""diffusers' per-step scheduler overhead, the reference side of Ember's
`crates/schedulers/benches/step_overhead.rs` (results in docs/benchmarks.md).

    tools/reference/run.sh bench_scheduler_overhead.py [--threads 2] [--runs 200]

For each scheduler config of crates/schedulers/benches/step_overhead_configs.json (the file the
Rust bench reads too): build the diffusers class from that config, and time full 50-step loops
of `scale_model_input` + `step` on a 1x4x64x64 float32 CPU tensor with a fixed model output
(no model). `set_timesteps(50)` runs before each loop, outside the timer (it also resets the
multistep history), as on the Rust side. Each timed loop ends with a scalar read-back
(`float(x.sum())` of the final sample and of the last model input), as on the Rust side.
Printed: the median over runs of (loop time / 50) in microseconds, plus min and max.

Threads: torch.set_num_threads(N) (default 2, the core count of the machine the numbers in
docs/benchmarks.md come from). torch only splits an element-wise op across threads above
its grain size (32768 elements), so on 16384-element tensors the loop is effectively
single-threaded either way; `--threads 1` shows it.

Inputs are deterministic and identical to Ember's: sample sin(0.37 i + 0.1) * init_noise_sigma,
model output cos(0.11 i), computed in float64 and cast to float32, so the final mean|x|
printed here can be compared with the Rust bench's.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import diffusers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIGS = ROOT / "crates" / "schedulers" / "benches" / "step_overhead_configs.json"


def inputs(shape, init_noise_sigma):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    x = (np.sin(0.37 * i + 0.1) * float(init_noise_sigma)).astype(np.float32).reshape(shape)
    e = np.cos(0.11 * i).astype(np.float32).reshape(shape)
    return torch.from_numpy(x), torch.from_numpy(e)


def build(cfg):
    cfg = dict(cfg)
    cls = getattr(diffusers, cfg.pop("_class_name"))
    return cls(**cfg)


def run_loop(sched, x0, eps):
    x = x0
    inp = None
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        x = sched.step(eps, t, x, return_dict=False)[0]
    return x, inp


def bench_one(cfg, steps, shape, runs, warmup):
    sched = build(cfg)
    sched.set_timesteps(steps)
    x0, eps = inputs(shape, sched.init_noise_sigma)
    per_step = []
    for r in range(warmup + runs):
        sched.set_timesteps(steps)  # untimed: resets the solver history
        start = time.perf_counter()
        x, inp = run_loop(sched, x0, eps)
        _ = float(x.sum()) + float(inp.sum())  # read back before stopping the timer
        elapsed = time.perf_counter() - start
        if r >= warmup:
            per_step.append(elapsed * 1e6 / len(sched.timesteps))
    ts = [float(t) for t in sched.timesteps]
    mean_abs = float(x.abs().double().mean())
    return per_step, ts, mean_abs


def bench_ops(shape, runs):
    """Single-op costs on the same tensor, comparable with the Rust bench's `ops/*`."""
    x, e = inputs(shape, 1.0)
    ops = {
        "isfinite_all_item": lambda: bool(torch.isfinite(x).all().item()),
        "scale (x * c)": lambda: x * 0.9,
        "add (x + y)": lambda: x + e,
        "lin_comb2 (a*x + b*y)": lambda: 0.9 * x + 0.1 * e,
        "read_back_sum": lambda: float(x.sum()),
    }
    out = {}
    for name, f in ops.items():
        for _ in range(200):
            f()
        samples = []
        for _ in range(runs):
            n = 200
            start = time.perf_counter()
            for _ in range(n):
                f()
            samples.append((time.perf_counter() - start) * 1e6 / n)
        out[name] = statistics.median(samples)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--runs", type=int, default=200, help="timed 50-step loops per scheduler")
    ap.add_argument("--warmup", type=int, default=20, help="untimed loops first")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    spec = json.loads(CONFIGS.read_text())
    steps, shape = spec["num_inference_steps"], spec["shape"]

    print(
        f"diffusers {diffusers.__version__}, torch {torch.__version__} (CPU, float32), "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    print(
        f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"os.cpu_count() {os.cpu_count()}; shape {shape}, {steps} steps, "
        f"{args.runs} timed loops after {args.warmup} warm-up loops"
    )
    rows = []
    for cfg in spec["schedulers"]:
        per_step, ts, mean_abs = bench_one(cfg, steps, shape, args.runs, args.warmup)
        med = statistics.median(per_step)
        rows.append((cfg["_class_name"], med, min(per_step), max(per_step)))
        print(
            f"PER-STEP {cfg['_class_name']}: median {med:.2f} us/step "
            f"(min {min(per_step):.2f}, max {max(per_step):.2f}; {len(per_step)} loops); "
            f"timesteps {ts[:3]} .. {ts[-1]} ({len(ts)} steps); final mean|x| = {mean_abs:.6f}"
        )
    print("\nsingle ops on the same tensor (median us per op):")
    for name, us in bench_ops(shape, 30).items():
        print(f"  {name:<24} {us:8.2f}")
    print("\nSUMMARY (us per step = median loop time / steps)")
    for name, med, lo, hi in rows:
        print(f"{name:<30} {med:10.2f}")


if __name__ == "__main__":
    main()
