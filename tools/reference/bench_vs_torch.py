"""PyTorch + diffusers side of `cargo xtask bench --vs-torch` (Ember's side is
crates/models/benches/vs_torch.rs; docs/benchmarks.md describes the cases).

    tools/reference/run.sh bench_vs_torch.py --case NAME --dir DIR --prepare
    tools/reference/run.sh bench_vs_torch.py --case NAME --dir DIR [--warmup W] [--runs N] [--threads T]

Cases (NAME):
  ddpm_cifar10_b1, ddpm_cifar10_b8  google/ddpm-cifar10-32's UNet2DModel forward at batch 1 / 8
                     (config crates/models/tests/fixtures/fullsize/ddpm_cifar10/config.json, weights
                     and inputs exactly as bench_unet_forward.py builds them).
  mnist_train_b64    one training step of a small class-conditional MNIST UNet2DModel
                     (tools/reference/bench_configs/mnist_unet.json) at batch 64: forward, MSE against
                     a fixed target, backward, AdamW(lr 1e-4, weight decay 0.01) step.
  sd15_unet_b1       Stable Diffusion 1.5's UNet2DConditionModel forward, 1x4x64x64 latent,
                     timestep 500, encoder_hidden_states 1x77x768, float32 weights
                     (config crates/models/tests/fixtures/fullsize/sd15/config.json).
  attention_4096     diffusers' Attention(query_dim=320, heads=8, dim_head=40) alone on hidden
                     states [1, 4096, 320] (tools/reference/bench_configs/attention_4096.json).

--prepare writes, into DIR, everything both sides load, and finally DIR/prepared.json (its presence
means "prepared"; delete DIR to regenerate):
  U-Net cases:  config.json + diffusion_pytorch_model.safetensors (save_pretrained, float32; random
                weights from make_unet_fixtures.reinit_, seed 12345), inputs.safetensors (diffusers'
                forward argument names), and for the forward cases output.safetensors (`output`,
                this stack's float32 eval-mode output); for mnist_train_b64 also target.safetensors
                (`target`) and reference.json (the loss of the first step at the initial weights,
                `loss0`, and of the second step after one AdamW update, `loss1`).
  attention:    attention.json (the layer's shape), weights.safetensors (the state dict: to_q,
                to_k, to_v, to_out.0), io.safetensors (`hidden_states`, `output`).
Inputs are deterministic formulas (flat index i, computed in float64, cast to float32):
  sample / hidden_states  sin(0.37 i + 0.1)      encoder_hidden_states  sin(0.11 i + 0.3)
  training target         cos(0.23 i + 0.2)      timesteps (training)   (37 j + 11) mod 1000, int64
  class labels            j mod 10, int64        timesteps (forwards)   500.0, float32
(j = batch index).

Timing mode loads the prepared files (the model is built on the meta device and the safetensors
state dict is assigned to it), first checks this run against the prepared reference (the check
counts as warm-up iteration(s): one forward, or two training steps), runs the remaining warm-up
iterations, then --runs timed ones; each timed iteration ends with a scalar read-back
(float(out.sum()), or float(loss) after the optimizer step). Forwards run in eval() under
torch.inference_mode(); the training step in train() mode with
torch.optim.AdamW(lr=1e-4, weight_decay=0.01) (betas 0.9/0.999, eps 1e-8).
Threads: torch.set_num_threads(--threads); the caller sets OMP_NUM_THREADS / MKL_NUM_THREADS too.

One JSON line on stdout (other output goes to stderr):
  {"case", "side": "pytorch", "median_ms", "min_ms", "max_ms", "runs", "warmup", "threads",
   "peak_rss_mb", "check", "max_abs_err", "rel_err", "tolerance", "check_ok", "times_ms": [...],
   "versions": {...}}
peak_rss_mb is the process's peak resident set (getrusage ru_maxrss), so it includes Python, torch
and the loaded weights. The check here is against this stack's own prepared reference (it catches
a stale folder or a non-deterministic stack); relative tolerance 1e-3 of max |output| for the U-Net
forwards, 1e-4 for the attention output and for the first training loss. When it fails the line
has no timings and the script exits with status 1.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.attention_processor import Attention

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import bench_unet_forward  # noqa: E402
from make_unet_fixtures import reinit_  # noqa: E402

SEED = 12345
FULLSIZE = ROOT / "crates" / "models" / "tests" / "fixtures" / "fullsize"
CONFIGS = HERE / "bench_configs"
LR = 1e-4
WEIGHT_DECAY = 0.01
# Relative tolerance of the check against the prepared reference (as on Ember's side).
TOLERANCE = {"forward": 1e-3, "attention": 1e-4, "train": 1e-4}

CASES = {
    "ddpm_cifar10_b1": dict(kind="forward", model="ddpm_cifar10", batch=1),
    "ddpm_cifar10_b8": dict(kind="forward", model="ddpm_cifar10", batch=8),
    "sd15_unet_b1": dict(kind="forward", model="sd15", batch=1),
    "mnist_train_b64": dict(kind="train", model="mnist", batch=64),
    "attention_4096": dict(kind="attention"),
}
CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}


def log(msg):
    print(f"[bench_vs_torch] {msg}", file=sys.stderr, flush=True)


def sin_input(shape, a, b):
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    return torch.from_numpy(np.sin(a * i + b).astype(np.float32).reshape(shape))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def read_config(path):
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def build_unet(model):
    """The random-weight model of a U-Net case, float32."""
    if model == "ddpm_cifar10":
        return bench_unet_forward.build_model()  # reinit_ seed 12345, eval()
    if model == "sd15":
        cfg = read_config(FULLSIZE / "sd15" / "config.json")
        with torch.device("meta"):
            m = UNet2DConditionModel(**cfg)
        m = m.to(dtype=torch.float32).to_empty(device="cpu")
    elif model == "mnist":
        m = UNet2DModel(**read_config(CONFIGS / "mnist_unet.json"))
    else:
        raise ValueError(model)
    reinit_(m, SEED)
    return m.float().eval()


def forward_inputs(case):
    spec = CASES[case]
    b = spec["batch"]
    if spec["model"] == "ddpm_cifar10":
        x, t = bench_unet_forward.inputs(b)  # sin(0.37 i + 0.1), t = 500.0
        return {"sample": x, "timestep": t}
    if spec["model"] == "sd15":
        return {
            "sample": sin_input((b, 4, 64, 64), 0.37, 0.1),
            "timestep": torch.full((b,), 500.0, dtype=torch.float32),
            "encoder_hidden_states": sin_input((b, 77, 768), 0.11, 0.3),
        }
    raise ValueError(case)


def train_inputs(batch):
    j = torch.arange(batch, dtype=torch.int64)
    inp = {
        "sample": sin_input((batch, 1, 28, 28), 0.37, 0.1),
        "timestep": (37 * j + 11) % 1000,
        "class_labels": j % 10,
    }
    i = np.arange(batch * 28 * 28, dtype=np.float64)
    target = torch.from_numpy(np.cos(0.23 * i + 0.2).astype(np.float32).reshape(batch, 1, 28, 28))
    return inp, target


def run_forward(model, inp):
    kw = {}
    if "encoder_hidden_states" in inp:
        kw["encoder_hidden_states"] = inp["encoder_hidden_states"]
    return model(inp["sample"], inp["timestep"], return_dict=False, **kw)[0]


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def train_step(model, opt, inp, target):
    opt.zero_grad(set_to_none=True)
    pred = model(inp["sample"], inp["timestep"], class_labels=inp["class_labels"], return_dict=False)[0]
    loss = F.mse_loss(pred, target)
    loss.backward()
    opt.step()
    return float(loss.detach())  # scalar read-back after the update


def attention_config():
    return json.loads((CONFIGS / "attention_4096.json").read_text())


def build_attention(cfg):
    return Attention(query_dim=cfg["query_dim"], heads=cfg["heads"], dim_head=cfg["dim_head"])


def prepare(case, out):
    spec = CASES[case]
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "prepared.json"
    if marker.exists():
        marker.unlink()
    info = {"case": case, "seed": SEED, "diffusers": diffusers.__version__, "torch": torch.__version__}
    if spec["kind"] == "attention":
        cfg = attention_config()
        attn = build_attention(cfg)
        reinit_(attn, SEED)
        attn = attn.float().eval()
        hs = sin_input((cfg["batch"], cfg["tokens"], cfg["query_dim"]), 0.37, 0.1)
        with torch.inference_mode():
            y = attn(hs)
        save_file({k: v.contiguous() for k, v in attn.state_dict().items()}, str(out / "weights.safetensors"))
        save_file({"hidden_states": hs, "output": y.contiguous()}, str(out / "io.safetensors"))
        (out / "attention.json").write_text(json.dumps(cfg, indent=1) + "\n")
        info["max_abs_output"] = float(y.abs().max())
    else:
        model = build_unet(spec["model"])
        model.save_pretrained(str(out))
        info["parameters"] = sum(p.numel() for p in model.parameters())
        if spec["kind"] == "forward":
            inp = forward_inputs(case)
            with torch.inference_mode():
                y = run_forward(model, inp)
            save_file(inp, str(out / "inputs.safetensors"))
            save_file({"output": y.contiguous()}, str(out / "output.safetensors"))
            info["max_abs_output"] = float(y.abs().max())
        else:
            inp, target = train_inputs(spec["batch"])
            save_file(inp, str(out / "inputs.safetensors"))
            save_file({"target": target}, str(out / "target.safetensors"))
            model.train()
            opt = make_optimizer(model)
            loss0 = train_step(model, opt, inp, target)
            loss1 = train_step(model, opt, inp, target)
            ref = {"loss0": loss0, "loss1": loss1, "lr": LR, "weight_decay": WEIGHT_DECAY}
            (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
            info.update(ref)
        del model
    marker.write_text(json.dumps(info, indent=1) + "\n")
    log(f"prepared {case} in {out}: {json.dumps(info)}")


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def load_unet(folder):
    """Builds the folder's model on the meta device and assigns the saved float32 tensors."""
    cfg = json.loads((folder / "config.json").read_text())
    cls = CLASSES[cfg["_class_name"]]
    with torch.device("meta"):
        model = cls.from_config(cfg)
    state = {}
    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        sys.exit(f"{folder}: no diffusion_pytorch_model*.safetensors (run --prepare)")
    for f in files:
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=True, assign=True)
    return model.float()


def max_abs(a, b):
    return float((a.float() - b.float()).abs().max())


def timed(n, fn):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench(case, folder, warmup, runs):
    """Returns (check description, max_abs_err, rel_err, timed milliseconds)."""
    spec = CASES[case]
    if spec["kind"] == "attention":
        cfg = json.loads((folder / "attention.json").read_text())
        with torch.device("meta"):
            attn = build_attention(cfg)
        attn.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=True, assign=True)
        attn = attn.float().eval()
        io = load_file(str(folder / "io.safetensors"))
        hs, ref = io["hidden_states"], io["output"]
        with torch.inference_mode():
            y = attn(hs)
            err = max_abs(y, ref)
            rel = err / float(ref.abs().max())
            if rel > TOLERANCE["attention"]:
                return "output vs prepared output", err, rel, []
            for _ in range(max(warmup - 1, 0)):
                float(attn(hs).sum())
            times = timed(runs, lambda: float(attn(hs).sum()))
        return "output vs prepared output", err, rel, times
    model = load_unet(folder)
    inp = load_file(str(folder / "inputs.safetensors"))
    if spec["kind"] == "forward":
        model.eval()
        ref = load_file(str(folder / "output.safetensors"))["output"]
        with torch.inference_mode():
            y = run_forward(model, inp)
            err = max_abs(y, ref)
            rel = err / float(ref.abs().max())
            if rel > TOLERANCE["forward"]:
                return "output vs prepared output", err, rel, []
            for _ in range(max(warmup - 1, 0)):
                float(run_forward(model, inp).sum())
            times = timed(runs, lambda: float(run_forward(model, inp).sum()))
        return "output vs prepared output", err, rel, times
    # training step
    target = load_file(str(folder / "target.safetensors"))["target"]
    ref = json.loads((folder / "reference.json").read_text())
    model.train()
    opt = make_optimizer(model)
    loss0 = train_step(model, opt, inp, target)
    loss1 = train_step(model, opt, inp, target)
    err = abs(loss0 - ref["loss0"])
    rel = err / abs(ref["loss0"])
    log(f"{case}: loss0 {loss0:.8g} (prepared {ref['loss0']:.8g}), loss1 {loss1:.8g} (prepared {ref['loss1']:.8g})")
    if rel > TOLERANCE["train"]:
        return "first-step loss vs prepared", err, rel, []
    for _ in range(max(warmup - 2, 0)):
        train_step(model, opt, inp, target)
    times = timed(runs, lambda: train_step(model, opt, inp, target))
    return "first-step loss vs prepared", err, rel, times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--dir", required=True, type=Path, help="the case's folder (written by --prepare)")
    ap.add_argument("--prepare", action="store_true", help="write weights, inputs and reference outputs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations, the check included")
    ap.add_argument("--runs", type=int, default=10, help="timed iterations")
    args = ap.parse_args()
    if args.runs < 1:
        sys.exit("--runs must be at least 1")

    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()
    folder = args.dir.resolve()
    if args.prepare:
        prepare(args.case, folder)
        return
    if not (folder / "prepared.json").exists():
        sys.exit(f"{folder} is not prepared; run with --prepare first")
    check, err, rel, times = bench(args.case, folder, args.warmup, args.runs)
    tolerance = TOLERANCE[CASES[args.case]["kind"]]
    stats = {}
    if times:
        stats = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
                 "max_ms": round(max(times), 3)}
    print(json.dumps({
        "case": args.case, "side": "pytorch", **stats, "runs": len(times),
        "warmup": args.warmup, "threads": args.threads, "peak_rss_mb": round(peak_rss_mb(), 1),
        "check": check, "max_abs_err": err, "rel_err": rel, "tolerance": tolerance,
        "check_ok": bool(times), "times_ms": [round(t, 3) for t in times],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }), flush=True)
    if not times:
        sys.exit(f"bench_vs_torch: {args.case}: CHECK FAILED ({check}): max-abs-err {err:.3e}, relative "
                 f"{rel:.3e} > tolerance {tolerance:.0e}; not timed")


if __name__ == "__main__":
    main()
