"""diffusers' UNet2DModel forward time on CPU, the reference side of Ember's U-Net forward
benchmark.

    tools/reference/run.sh bench_unet_forward.py [--threads 2] [--batch 1,8] [--runs 10]
        [--warmup 3] [--save DIR]

Model: google/ddpm-cifar10-32's UNet2DModel (35.7 M parameters), built from the committed
config crates/models/tests/fixtures/fullsize/ddpm_cifar10/config.json, float32, random weights
from make_unet_fixtures.reinit_ with seed 12345: the same weights that
`make_unet_fixtures.py --fullsize-weights DIR` writes to DIR/ddpm_cifar10.
eval() + torch.inference_mode(), torch.set_num_threads(--threads) (default 2, the core count of
the machine the numbers in docs/benchmarks.md come from).

Inputs are deterministic and easy to rebuild on the Rust side: sample[i] = sin(0.37 i + 0.1)
(flat index i over [B, 3, 32, 32], computed in float64, cast to float32), timestep = 500.0 for
every batch entry (a float32 tensor of length B).

For each batch size: --warmup untimed forwards, then --runs timed ones; each timed forward ends
with a scalar read-back (float(out.sum())). One JSON line per batch size:
    {"model": "ddpm_cifar10", "batch": B, "median_ms": ..., "min_ms": ..., "max_ms": ...,
     "threads": T, "runs": N, "peak_rss_mb": ..., "out_sum": ...}
peak_rss_mb is the process's peak resident set so far (getrusage ru_maxrss), so it includes
Python, torch and the model.

--save DIR writes the weights via save_pretrained (config.json +
diffusion_pytorch_model.safetensors, float32) and, per batch size, io_b<B>.safetensors with
`sample`, `timestep` and the float32 `output` of this run, so the Rust side can load identical
weights and check its output before timing.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = ROOT / "crates" / "models" / "tests" / "fixtures" / "fullsize" / "ddpm_cifar10" / "config.json"
SEED = 12345
sys.path.insert(0, str(HERE))
from make_unet_fixtures import reinit_  # noqa: E402


def build_model():
    cfg = json.loads(CONFIG.read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model = UNet2DModel(**cfg)
    reinit_(model, SEED)
    return model.float().eval()


def inputs(batch):
    shape = (batch, 3, 32, 32)
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    x = np.sin(0.37 * i + 0.1).astype(np.float32).reshape(shape)
    return torch.from_numpy(x), torch.full((batch,), 500.0, dtype=torch.float32)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--save", type=Path, default=None, help="write the weights and per-batch inputs/outputs here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",") if b]
    model = build_model()
    if args.save is not None:
        model.save_pretrained(str(args.save))
    print(json.dumps({"info": "bench_unet_forward", "diffusers": diffusers.__version__, "torch": torch.__version__,
                      "python": platform.python_version(), "machine": platform.machine(),
                      "parameters": sum(p.numel() for p in model.parameters())}), flush=True)

    for batch in batches:
        x, t = inputs(batch)
        times = []
        with torch.inference_mode():
            for r in range(args.warmup + args.runs):
                start = time.perf_counter()
                out = model(x, t).sample
                out_sum = float(out.sum())  # read back before stopping the timer
                elapsed = time.perf_counter() - start
                if r >= args.warmup:
                    times.append(elapsed * 1e3)
        if args.save is not None:
            save_file({"sample": x, "timestep": t, "output": out.contiguous()},
                      str(args.save / f"io_b{batch}.safetensors"))
        print(json.dumps({
            "model": "ddpm_cifar10", "batch": batch, "median_ms": round(statistics.median(times), 3),
            "min_ms": round(min(times), 3), "max_ms": round(max(times), 3), "threads": args.threads,
            "runs": args.runs, "peak_rss_mb": round(peak_rss_mb(), 1), "out_sum": out_sum,
        }), flush=True)


if __name__ == "__main__":
    main()
