"""Proof that a pipeline folder written by Ember (model_index.json, unet/, scheduler/) loads in
diffusers and that `ember forward` on its unet/ gives diffusers' forward output.

    tools/reference/run.sh check_trained_folder.py FOLDER --ember-bin target/release/ember \
        [--batch 4] [--tolerance 1e-4] [--seed 0] [--write-fixture DIR] [--keep DIR]

Steps:
  1. DiffusionPipeline.from_pretrained(FOLDER) must succeed; prints the pipeline class and its
     components (class, and config highlights). UNet2DModel.from_pretrained(FOLDER/unet) likewise.
  2. Seeded inputs (torch.Generator(seed)): `sample` [batch, in_channels, sample_size, sample_size]
     ~ N(0, 1) float32; `timestep` [batch] float32, whole numbers spread evenly over
     [0, num_train_timesteps - 1] (from scheduler/, else the unet config, else 1000); and, when
     the unet has num_class_embeds (class_embed_type None), `class_labels` [batch] int64 spread
     evenly over [0, num_class_embeds - 1], so the last (null) class is included. These are the
     names and dtypes `ember forward` reads (crates/models/src/io.rs read_forward_inputs).
  3. Runs `EMBER_BIN forward --model FOLDER/unet --inputs IN --out OUT` and reads OUT's `sample`.
  4. Runs diffusers' forward (float32, eval, no grad) on the same inputs, prints max |diff| and
     max |ref|, and exits 1 when max |diff| > tolerance * max(1, max |ref|) (or shapes differ /
     non-finite values). Exit 2 for a folder diffusers cannot load or an Ember failure.
With --write-fixture DIR it also writes DIR/inputs.safetensors (the inputs above) and
DIR/expected.safetensors (`sample`: diffusers' output), before running Ember, so a Rust test
can compare without Python. Temporary files go to a temp dir unless --keep DIR is given.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import DiffusionPipeline, UNet2DModel


def describe(obj):
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return type(obj).__name__
    keys = [
        "sample_size", "in_channels", "out_channels", "block_out_channels", "num_class_embeds",
        "num_train_timesteps", "beta_schedule", "prediction_type",
    ]
    bits = [f"{k}={cfg[k]}" for k in keys if k in cfg and cfg[k] is not None]
    return f"{type(obj).__name__}({', '.join(bits)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--ember-bin", required=True, type=Path)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", help="passed to `ember forward --device`")
    ap.add_argument("--write-fixture", type=Path, metavar="DIR")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="write inputs / Ember output here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()  # the accelerate / low_cpu_mem_usage notice
    diffusers.utils.logging.disable_progress_bar()
    if args.batch < 1:
        sys.exit("--batch must be >= 1")

    folder = args.folder
    # 1. Loading.
    try:
        pipe = DiffusionPipeline.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        print(f"FAIL: DiffusionPipeline.from_pretrained({folder}) raised {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"pipeline: {type(pipe).__name__} (diffusers {diffusers.__version__}, torch {torch.__version__})")
    for name, comp in pipe.components.items():
        print(f"  {name}: {describe(comp)}")
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet")
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: UNet2DModel.from_pretrained({folder / 'unet'}) raised {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    unet = unet.float().eval()
    cfg = unet.config
    if cfg.class_embed_type is not None:
        print(f"class_embed_type {cfg.class_embed_type!r} is not covered by this check (only num_class_embeds)",
              file=sys.stderr)
        sys.exit(2)

    # 2. Inputs.
    sched = getattr(pipe, "scheduler", None)
    T = None
    if sched is not None and "num_train_timesteps" in sched.config:
        T = sched.config.num_train_timesteps
    T = T or cfg.num_train_timesteps or 1000
    size = cfg.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    b = args.batch
    gen = torch.Generator().manual_seed(args.seed)
    inputs = {
        "sample": torch.randn((b, cfg.in_channels, *size), generator=gen, dtype=torch.float32),
        "timestep": (torch.linspace(0, T - 1, b, dtype=torch.float64).round().float()
                     if b > 1 else torch.tensor([float(T // 2)])),
    }
    if cfg.num_class_embeds:
        n = cfg.num_class_embeds
        inputs["class_labels"] = (torch.linspace(0, n - 1, b, dtype=torch.float64).round().long()
                                  if b > 1 else torch.tensor([n - 1], dtype=torch.int64))
    print("inputs: " + ", ".join(
        f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
        + (f" = {v.tolist()}" if v.dim() == 1 else "") for k, v in inputs.items()))

    # Reference forward.
    with torch.no_grad():
        ref = unet(inputs["sample"], inputs["timestep"], class_labels=inputs.get("class_labels"),
                   return_dict=False)[0].float().contiguous()

    if args.write_fixture:
        args.write_fixture.mkdir(parents=True, exist_ok=True)
        meta = {"source": str(folder), "diffusers": diffusers.__version__, "torch": torch.__version__,
                "seed": str(args.seed)}
        save_file({k: v.contiguous() for k, v in inputs.items()}, args.write_fixture / "inputs.safetensors", meta)
        save_file({"sample": ref}, args.write_fixture / "expected.safetensors", meta)
        print(f"wrote fixture {args.write_fixture}/inputs.safetensors, expected.safetensors")

    # 3. Ember.
    tmp = None
    if args.keep:
        work = args.keep
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="check_trained_folder.")
        work = Path(tmp.name)
    in_path, out_path = work / "inputs.safetensors", work / "ember_output.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, in_path)
    out_path.unlink(missing_ok=True)
    cmd = [str(args.ember_bin), "forward", "--model", str(folder / "unet"), "--inputs", str(in_path),
           "--out", str(out_path)]
    if args.device:
        cmd += ["--device", args.device]
    print("running: " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        print(f"FAIL: cannot run {args.ember_bin}: {e}", file=sys.stderr)
        sys.exit(2)
    if proc.returncode != 0 or not out_path.is_file():
        sys.stderr.write(proc.stdout + proc.stderr)
        print(f"FAIL: ember forward exited with {proc.returncode}", file=sys.stderr)
        sys.exit(2)
    print(f"ember forward took {time.perf_counter() - t0:.2f} s")
    got_all = load_file(out_path)
    if "sample" not in got_all:
        print(f"FAIL: {out_path} has no `sample` tensor (has {sorted(got_all)})", file=sys.stderr)
        sys.exit(2)
    got = got_all["sample"].float()

    # 4. Compare.
    result = {"folder": str(folder), "pipeline": type(pipe).__name__, "shape": list(ref.shape)}
    if tuple(got.shape) != tuple(ref.shape):
        print(f"FAIL: ember output shape {list(got.shape)} != diffusers {list(ref.shape)}", file=sys.stderr)
        sys.exit(1)
    if not torch.isfinite(got).all():
        print("FAIL: ember output has non-finite values", file=sys.stderr)
        sys.exit(1)
    diff = (got - ref).abs()
    max_diff, max_ref = diff.max().item(), ref.abs().max().item()
    bound = args.tolerance * max(1.0, max_ref)
    ok = max_diff <= bound
    result.update(max_abs_diff=max_diff, max_abs_ref=max_ref, mean_abs_diff=diff.mean().item(),
                  tolerance=args.tolerance, bound=bound, ok=ok)
    print(f"max |ember - diffusers| = {max_diff:.3e}   max |diffusers| = {max_ref:.4f}   "
          f"bound = {bound:.3e}   -> {'OK' if ok else 'FAIL'}")
    print(json.dumps(result))
    if tmp:
        tmp.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
