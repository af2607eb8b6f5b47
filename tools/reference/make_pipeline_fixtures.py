"""Writes end-to-end sampling parity fixtures for Ember's pipelines (a tiny untrained UNet2DModel
driven by each deterministic scheduler for a whole sampling loop).

    tools/reference/run.sh make_pipeline_fixtures.py [--only NAME_SUBSTRING] [--out DIR]

Default out = crates/pipelines/tests/fixtures. It writes:

  ddpm_tiny/                    a diffusers pipeline folder exactly as
                                `DDPMPipeline(unet, DDPMScheduler()).save_pretrained(dir)` writes it:
                                model_index.json, unet/config.json,
                                unet/diffusion_pytorch_model.safetensors (float32),
                                scheduler/scheduler_config.json (DDPMScheduler defaults: 1000 train
                                steps, linear betas 1e-4..0.02, clip_sample=True, epsilon).
  latents.safetensors           `latents`: float32 [2, 3, 16, 16], standard normal from
                                torch.Generator().manual_seed(LATENT_SEED): the initial noise
                                BEFORE multiplication by init_noise_sigma.
  cases/<name>.json             scheduler_config (the scheduler's full config as its
                                scheduler_config.json would hold it, `_class_name` included, taken
                                before set_timesteps), num_inference_steps, the schedule diffusers
                                built (`timesteps`, `sigmas`), the `t` values the UNet was given,
                                init_noise_sigma, and notes on the dtypes of the float64 run.
  cases/<name>.safetensors      `sample`: the loop's result computed in float64 (model.double(),
                                latents.double()), stored as float32; `sample_fp32`: the same loop
                                in float32.
  cases.json                    [{name, class, num_inference_steps, max_abs_fp32_vs_fp64,
                                  max_abs_output, tolerance}], tolerance =
                                max(2e-4, 10 * max_abs_fp32_vs_fp64).

The loop is the DDPMPipeline / DDIMPipeline / StableDiffusion contract written out (the
pipelines' __call__ also clamps and converts to images, which is not wanted here):

    scheduler.set_timesteps(num_inference_steps)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        eps = unet(model_in, t).sample
        x = scheduler.step(eps, t, x).prev_sample

`t` is the 0-d tensor taken from scheduler.timesteps, exactly as the pipelines pass it (int64 for
DDIM / PNDM / DPM-Solver / UniPC / DEIS, float32 for the Euler family, Heun, LMS, KDPM2, flow
matching and EDM). Flow-matching schedulers have neither init_noise_sigma nor
scale_model_input: the latents are used as they are, the model sees x unchanged, and its output
is taken as the velocity. For a float64 run, UNet2DModel still computes the sinusoidal time
embedding in float32 (get_timestep_embedding calls .float()), and many schedulers keep their
schedule tensors (alphas_cumprod, sigmas) in float32, or even cast the sample to float32 inside
step(); each case's json records what happened (`fp64_run`).

Model: UNet2DModel(in/out 3, sample_size 16, block_out_channels (16, 32), layers_per_block 1,
DownBlock2D + AttnDownBlock2D, AttnUpBlock2D + UpBlock2D, norm_num_groups 4, attention_head_dim
8), every parameter re-initialised by make_unet_fixtures.reinit_(model, MODEL_SEED), then conv_out
(weight and bias) multiplied by OUTPUT_SCALE. The output passes through GroupNorm + SiLU + conv_out,
so its size hardly depends on the input's: with OUTPUT_SCALE = 1 the untrained model's epsilon is
already O(1) (checked below: |out| < 3 for >= 99.9% of the entries, for unit-normal and
80-sigma inputs at several t).

Checks: the pipeline folder loads back (same weights, same scheduler config); ddim_leading's
float32 result equals DDIMPipeline.__call__'s image output bit for bit (it draws the same
latents); every intermediate sample is finite; the float64 and float32 runs see the same
schedule; the total size stays under 2 MB.
"""

import argparse
import copy
import inspect
import json
import shutil
import sys
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from make_scheduler_fixtures import json_safe  # noqa: E402
from make_unet_fixtures import reinit_  # noqa: E402

DEFAULT_OUT = ROOT / "crates" / "pipelines" / "tests" / "fixtures"
EXPECTED_DIFFUSERS = "0.42.1"
MODEL_SEED = 2024
LATENT_SEED = 7
OUTPUT_SCALE = 1.0
SHAPE = (2, 3, 16, 16)
STEPS = 10
TOL_FLOOR = 2e-4
TOL_FACTOR = 10.0
MAX_BYTES = 2 * 1024 * 1024

UNET_CONFIG = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4, attention_head_dim=8,
)

# base "ddpm": built with from_config(ddpm_scheduler.config, **overrides);
# base "own": built with the class's own defaults plus overrides (no DDPM betas).
CASES = [
    dict(name="ddim_leading", cls="DDIMScheduler", base="ddpm", overrides=dict(timestep_spacing="leading")),
    dict(name="ddim_trailing", cls="DDIMScheduler", base="ddpm", overrides=dict(timestep_spacing="trailing")),
    dict(name="ddim_linspace", cls="DDIMScheduler", base="ddpm", overrides=dict(timestep_spacing="linspace")),
    dict(name="euler", cls="EulerDiscreteScheduler", base="ddpm", overrides={}),
    dict(name="euler_karras", cls="EulerDiscreteScheduler", base="ddpm", overrides=dict(use_karras_sigmas=True)),
    dict(name="heun", cls="HeunDiscreteScheduler", base="ddpm", overrides={}),
    # Heun inherits clip_sample=True from the DDPM config and its last step returns the clipped
    # x0 prediction, so most of `heun`'s output is exactly +-1; this one keeps the values.
    dict(name="heun_noclip", cls="HeunDiscreteScheduler", base="ddpm", overrides=dict(clip_sample=False)),
    dict(name="lms", cls="LMSDiscreteScheduler", base="ddpm", overrides={}),
    dict(name="dpmpp_2m", cls="DPMSolverMultistepScheduler", base="ddpm",
         overrides=dict(algorithm_type="dpmsolver++", solver_order=2)),
    dict(name="dpmpp_3m", cls="DPMSolverMultistepScheduler", base="ddpm",
         overrides=dict(algorithm_type="dpmsolver++", solver_order=3)),
    dict(name="dpmpp_2s", cls="DPMSolverSinglestepScheduler", base="ddpm", overrides={}),
    dict(name="unipc", cls="UniPCMultistepScheduler", base="ddpm", overrides={}),
    dict(name="deis", cls="DEISMultistepScheduler", base="ddpm", overrides={}),
    dict(name="pndm_plms", cls="PNDMScheduler", base="ddpm", overrides=dict(skip_prk_steps=True)),
    dict(name="kdpm2", cls="KDPM2DiscreteScheduler", base="ddpm", overrides={}),
    dict(name="flow_match_euler", cls="FlowMatchEulerDiscreteScheduler", base="own", overrides={}),
    dict(name="edm_euler", cls="EDMEulerScheduler", base="own", overrides={}),
]

SKIPPED = [
    dict(cls="DDPMScheduler", reason="stochastic: every step but the last adds fresh noise (variance "
         "noise from randn_tensor), so an end-to-end loop has no fixed answer without replaying the noise; "
         "the scheduler fixtures cover its step with recorded noise"),
    dict(cls="EulerAncestralDiscreteScheduler / KDPM2AncestralDiscreteScheduler / DPM++ SDE variants",
         reason="stochastic, same reason"),
]


# ---------------------------------------------------------------------------------------------

def full_config(sched):
    # to_json_string is exactly what diffusers writes as scheduler_config.json.
    cfg = json.loads(sched.to_json_string())
    cfg["_class_name"] = type(sched).__name__
    return cfg


def build_unet():
    torch.manual_seed(MODEL_SEED)
    model = UNet2DModel(**copy.deepcopy(UNET_CONFIG))
    model.eval()
    with torch.no_grad():
        reinit_(model, MODEL_SEED)
        if OUTPUT_SCALE != 1.0:
            model.conv_out.weight.mul_(OUTPUT_SCALE)
            model.conv_out.bias.mul_(OUTPUT_SCALE)
    return model


def check_output_scale(model):
    """The untrained epsilon must be O(1), or long sampling loops blow up."""
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(SHAPE, generator=gen)
    rows = []
    with torch.no_grad():
        for scale in (1.0, 80.0):
            for t in (999.0, 500.0, 10.0, 0.5, -1.5):
                out = model(x * scale, torch.tensor(t)).sample
                frac = (out.abs() < 3).double().mean().item()
                rows.append(dict(input_scale=scale, t=t, std=out.std().item(), max_abs=out.abs().max().item(),
                                 frac_below_3=frac))
                if frac < 0.999 or out.abs().max().item() > 10:
                    raise RuntimeError(f"untrained UNet output too large: {rows[-1]}; lower OUTPUT_SCALE")
    return rows


def build_scheduler(case, ddpm_config):
    cls = getattr(diffusers, case["cls"])
    if case["base"] == "ddpm":
        return cls.from_config(ddpm_config, **case["overrides"])
    return cls(**case["overrides"])


def scalar(x):
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def dtype_name(x):
    return str(x.dtype).replace("torch.", "") if isinstance(x, torch.Tensor) else type(x).__name__


def f64_list(x):
    return torch.as_tensor(x).detach().to(torch.float64).flatten().tolist()


def same_step(sched, eps, t, x, rounded, which):
    """True if step() gives a bitwise-identical prev_sample when `which` is pre-rounded to float32;
    None when the value is float32-representable already, or step() ignores it (Heun's and
    PLMS's second evaluations use the sample stored by the previous step)."""
    orig = x if which == "sample" else eps

    def run(value):
        args = (eps, t, value) if which == "sample" else (value, t, x)
        return copy.deepcopy(sched).step(*args).prev_sample

    if torch.equal(orig, rounded):
        return None
    ref = run(orig)
    if torch.equal(ref, run(orig + 0.5)):
        return None
    return bool(torch.equal(ref, run(rounded)))


def run_loop(case, ddpm_config, model, latents, dtype):
    """Runs the sampling loop with model and latents in `dtype`; returns (sample, info)."""
    sched = build_scheduler(case, ddpm_config)
    config_before = full_config(sched)
    model = model.to(dtype)
    sched.set_timesteps(STEPS)
    config_after = full_config(sched)
    has_ins = hasattr(sched, "init_noise_sigma")
    has_smi = hasattr(sched, "scale_model_input")
    ins = sched.init_noise_sigma if has_ins else 1.0
    x = latents.to(dtype) * ins if has_ins else latents.to(dtype)
    unet_t = []
    step_fp32_repr = []
    rounds_sample, rounds_eps = [], []
    step_out_dtypes = set()
    model_in_dtypes = set()
    with torch.no_grad():
        for t in sched.timesteps:
            model_in = sched.scale_model_input(x, t) if has_smi else x
            model_in_dtypes.add(dtype_name(model_in))
            unet_t.append(dict(value=scalar(t), dtype=dtype_name(t)))
            eps = model(model_in, t).sample
            if dtype == torch.float64:
                # Does step() round its float64 inputs to float32? Replay this step on copies of the
                # scheduler with the sample (model output) pre-rounded to float32: a bitwise-equal
                # prev_sample means step() rounds it itself.
                rounds_sample.append(same_step(sched, eps, t, x, x.float().double(), "sample"))
                rounds_eps.append(same_step(sched, eps, t, x, eps.float().double(), "model_output"))
            prev = sched.step(eps, t, x).prev_sample
            step_out_dtypes.add(dtype_name(prev))
            step_fp32_repr.append(bool(torch.equal(prev, prev.float().to(prev.dtype))))
            if not torch.isfinite(prev).all():
                raise FloatingPointError(f"{case['name']}: non-finite sample at t={scalar(t)}")
            x = prev
    sched_tensors = {}
    for attr in ("timesteps", "sigmas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t"):
        v = getattr(sched, attr, None)
        if isinstance(v, torch.Tensor):
            sched_tensors[attr] = dtype_name(v)
    info = dict(
        config=config_before,
        config_changed_by_set_timesteps={k: v for k, v in config_after.items() if config_before.get(k) != v},
        timesteps=f64_list(sched.timesteps),
        timesteps_dtype=dtype_name(sched.timesteps),
        sigmas=f64_list(sched.sigmas) if isinstance(getattr(sched, "sigmas", None), torch.Tensor) else None,
        init_noise_sigma=scalar(ins) if has_ins else None,
        init_noise_sigma_type=dtype_name(ins) if has_ins else None,
        has_scale_model_input=has_smi,
        unet_t=unet_t,
        step_out_dtypes=sorted(step_out_dtypes),
        model_in_dtypes=sorted(model_in_dtypes),
        step_out_fp32_representable=step_fp32_repr,
        step_rounds_sample_to_fp32=rounds_sample,
        step_rounds_model_output_to_fp32=rounds_eps,
        scheduler_tensor_dtypes=sched_tensors,
        order=int(getattr(sched, "order", 1)),
    )
    return x, info


def run_case(case, ddpm_config, model, latents):
    s64, i64 = run_loop(case, ddpm_config, model, latents, torch.float64)
    s32, i32 = run_loop(case, ddpm_config, model, latents, torch.float32)
    model.to(torch.float32)
    for k in ("config", "timesteps", "sigmas", "unet_t"):
        if k == "unet_t":
            same = [u["value"] for u in i64[k]] == [u["value"] for u in i32[k]]
        else:
            same = i64[k] == i32[k]
        if not same:
            raise RuntimeError(f"{case['name']}: {k} differs between the float64 and float32 runs")
    diff = (s32.double() - s64).abs().max().item()
    max_out = s64.abs().max().item()
    tol = max(TOL_FLOOR, TOL_FACTOR * diff)
    reprs = i64["step_out_fp32_representable"]
    casts = "sample.to(torch.float32)" in inspect.getsource(type(build_scheduler(case, ddpm_config)).step)
    rs = [r for r in i64["step_rounds_sample_to_fp32"] if r is not None]
    re_ = [r for r in i64["step_rounds_model_output_to_fp32"] if r is not None]
    # The source check decides; the per-step replays (step_rounds_*) are recorded as evidence.
    # (A replay can agree by chance where the rounding cancels, e.g. Heun's last Euler step.)
    if all(reprs):
        step_note = "step() computes in float32: every float64 prev_sample holds float32 values"
    elif casts and rs and all(rs) and not any(re_):
        step_note = ("step() rounds the sample to float32 on entry (sample.to(torch.float32)), then "
                     "mixes it with the float64 model output, so the arithmetic after that is float64 "
                     "with a float32-rounded sample")
    elif casts:
        step_note = ("step() converts the model output (x0 / epsilon) with the float64 sample, then "
                     "rounds the sample to float32 (sample.to(torch.float32)) for the update term; "
                     "the arithmetic itself is float64")
    else:
        step_note = ("step() computes in float64 (with float32 schedule scalars where the scheduler "
                     "keeps them in float32)")
    nonfinite = {}
    config = json_safe(i64["config"], "", nonfinite)
    meta = dict(
        name=case["name"],
        **{"class": case["cls"]},
        diffusers_version=diffusers.__version__,
        torch_version=torch.__version__,
        scheduler_config=config,
        scheduler_config_nonfinite=nonfinite,
        built_with=("from_config(ddpm_tiny/scheduler/scheduler_config.json, **overrides)"
                    if case["base"] == "ddpm" else "the class's own defaults plus overrides"),
        overrides=case["overrides"],
        config_changed_by_set_timesteps=i64["config_changed_by_set_timesteps"],
        num_inference_steps=STEPS,
        num_model_evaluations=len(i64["unet_t"]),
        timesteps=i64["timesteps"],
        timesteps_dtype=i64["timesteps_dtype"],
        sigmas=i64["sigmas"],
        init_noise_sigma=i64["init_noise_sigma"],
        init_noise_sigma_type=i64["init_noise_sigma_type"],
        has_scale_model_input=i64["has_scale_model_input"],
        unet_timesteps=[u["value"] for u in i64["unet_t"]],
        unet_timestep_dtype=sorted({u["dtype"] for u in i64["unet_t"]}),
        order=i64["order"],
        max_abs_fp32_vs_fp64=diff,
        max_abs_output=max_out,
        tolerance=tol,
        fp64_run=dict(
            model_input_dtype=i64["model_in_dtypes"],
            prev_sample_dtype=i64["step_out_dtypes"],
            scheduler_tensor_dtypes=i64["scheduler_tensor_dtypes"],
            step_out_fp32_representable=reprs,
            step_rounds_sample_to_fp32=i64["step_rounds_sample_to_fp32"],
            step_rounds_model_output_to_fp32=i64["step_rounds_model_output_to_fp32"],
            step_note=step_note,
            step_source_has_sample_to_float32=casts,
            time_embedding="computed in float32 by UNet2DModel (get_timestep_embedding calls .float()), "
                           "then cast to float64",
        ),
    )
    tensors = dict(sample=s64.to(torch.float32).contiguous(), sample_fp32=s32.contiguous())
    summary = dict(name=case["name"], **{"class": case["cls"]}, num_inference_steps=STEPS,
                   max_abs_fp32_vs_fp64=diff, max_abs_output=max_out, tolerance=tol)
    return meta, tensors, summary


def save_pipeline(model, out):
    folder = out / "ddpm_tiny"
    if folder.exists():
        shutil.rmtree(folder)
    pipe = DDPMPipeline(unet=model, scheduler=DDPMScheduler())
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # Load it back: same weights, same forward.
    back = DDPMPipeline.from_pretrained(str(folder), dtype=torch.float32)
    sd, sd_back = model.state_dict(), back.unet.state_dict()
    if sd.keys() != sd_back.keys() or any(not torch.equal(sd[k], sd_back[k]) for k in sd):
        raise RuntimeError("ddpm_tiny does not load back to the same weights")
    if full_config(back.scheduler) != full_config(pipe.scheduler):
        raise RuntimeError("ddpm_tiny scheduler config does not load back")
    return folder, back.scheduler.config


def check_against_ddim_pipeline(model, ddpm_config, sample_fp32):
    """The written-out loop must be diffusers' own: DDIMPipeline.__call__ (which draws the same
    latents from the same seeded generator) must return clamp(sample_fp32 / 2 + 0.5, 0, 1)."""
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(ddpm_config, timestep_spacing="leading"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(LATENT_SEED),
                  num_inference_steps=STEPS, eta=0.0, output_type="np").images
    expected = (sample_fp32 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    if not (images == expected).all():
        raise RuntimeError("ddim_leading differs from DDIMPipeline.__call__")


def dir_bytes(p):
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default=None, help="only cases whose name contains this (cases.json is "
                    "then not rewritten)")
    args = ap.parse_args()

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        sys.exit(f"diffusers {diffusers.__version__} installed, fixtures are pinned to {EXPECTED_DIFFUSERS}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = build_unet()
    scale_rows = check_output_scale(model)
    worst = max(r["max_abs"] for r in scale_rows)
    print(f"untrained UNet output: max |eps| {worst:.3f} over {len(scale_rows)} probes "
          f"(std {min(r['std'] for r in scale_rows):.3f}..{max(r['std'] for r in scale_rows):.3f})")

    _, ddpm_config = save_pipeline(model, out)
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(LATENT_SEED), dtype=torch.float32)
    save_file({"latents": latents.contiguous()}, str(out / "latents.safetensors"),
              metadata={"source": f"torch.randn({list(SHAPE)}, generator=torch.Generator().manual_seed({LATENT_SEED}))"})
    if not torch.equal(load_file(str(out / "latents.safetensors"))["latents"], latents):
        raise RuntimeError("latents do not load back")

    cases = CASES if not args.only else [c for c in CASES if args.only in c["name"]]
    case_dir = out / "cases"
    case_dir.mkdir(exist_ok=True)
    summaries, failed = [], []
    for c in cases:
        try:
            meta, tensors, summary = run_case(c, ddpm_config, model, latents)
        except Exception as e:  # report every broken case, then fail
            failed.append((c["name"], f"{type(e).__name__}: {e}"))
            print(f"FAIL {c['name']}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        (case_dir / f"{c['name']}.json").write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
        save_file(tensors, str(case_dir / f"{c['name']}.safetensors"),
                  metadata={"source": f"diffusers {diffusers.__version__}, case {c['name']}"})
        summaries.append(summary)
        if c["name"] == "ddim_leading":
            check_against_ddim_pipeline(model, ddpm_config, tensors["sample_fp32"])
        print(f"ok   {c['name']:18s} {c['cls']:32s} evals={meta['num_model_evaluations']:2d} "
              f"fp32-vs-fp64={summary['max_abs_fp32_vs_fp64']:.3e} tol={summary['tolerance']:.3e} "
              f"max|out|={summary['max_abs_output']:.3f}  fp64 step: {meta['fp64_run']['step_note'][:40]}")
    for s in SKIPPED:
        print(f"skip {s['cls']}: {s['reason']}")

    if not args.only:
        (out / "cases.json").write_text(json.dumps(summaries, indent=1, allow_nan=False) + "\n")
        names = {c["name"] for c in CASES}
        stale = sorted(p.name for p in case_dir.iterdir() if p.stem not in names)
        for s in stale:
            print(f"stale fixture (no such case), delete it: cases/{s}", file=sys.stderr)
        if stale:
            failed.append(("stale", ", ".join(stale)))

    total = dir_bytes(out)
    print(f"{len(summaries)} cases written to {out}; total {total / 1024:.0f} KiB")
    if total > MAX_BYTES:
        failed.append(("size", f"{total} bytes > {MAX_BYTES}"))
    if failed:
        sys.exit("failed: " + "; ".join(f"{n}: {e}" for n, e in failed))


if __name__ == "__main__":
    main()
