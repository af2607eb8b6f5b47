"""PyTorch side of `cargo bench -p ember-models --bench unet_ops`: the U-Net's hot operations
alone on DDPM-CIFAR10 shapes at batch 8 (conv 3x3, GroupNorm + SiLU, diffusers' spatial
attention block, a 1024 matmul for the machine's peak).

    tools/reference/run.sh bench_unet_ops.py [--threads 2]

One JSON line per op: median of 20 timed runs after 3 warm-ups, each ending with a scalar
read-back.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers.models.attention_processor import Attention


def bench(name, fn, flops=0.0):
    for _ in range(3):
        fn()
    ms = []
    for _ in range(20):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(ms)
    out = {"op": name, "side": "pytorch", "median_ms": round(med, 3), "min_ms": round(min(ms), 3)}
    if flops:
        out["gflops"] = round(flops / med / 1e6, 1)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.inference_mode():
        x = torch.randn(8, 128, 32, 32)
        conv = torch.nn.Conv2d(128, 128, 3, padding=1)
        bench("conv2d_3x3_8x128x32x32", lambda: float(conv(x).sum()), 2.0 * 8 * 128 * 128 * 9 * 32 * 32)
        norm = torch.nn.GroupNorm(32, 128, eps=1e-6)
        bench("groupnorm_silu_8x128x32x32", lambda: float(torch.nn.functional.silu(norm(x)).sum()))
        h = torch.randn(8, 256, 16, 16)
        attn = Attention(256, heads=1, dim_head=256, norm_num_groups=32, eps=1e-6, residual_connection=True,
                         bias=True, upcast_softmax=True, _from_deprecated_attn_block=True).eval()
        bench("spatial_attention_8x256x16x16", lambda: float(attn(h).sum()))
        a = torch.randn(1024, 1024)
        bench("matmul_1024", lambda: float((a @ a).sum()), 2.0 * 1024 ** 3)


if __name__ == "__main__":
    main()
