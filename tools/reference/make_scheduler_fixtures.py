"""Writes diffusers reference fixtures for every case in scheduler_cases.py.

    tools/reference/run.sh make_scheduler_fixtures.py [--only NAME_SUBSTRING] [--out DIR]

For each case it writes `<out>/<name>.json` (config, request, schedule, per-step metadata) and
`<out>/<name>.safetensors` (float32 tensors), default out = crates/schedulers/tests/fixtures.

The sampling loop is diffusers' own:
    sample = randn(shape) * init_noise_sigma
    for t in timesteps[begin_index:]:
        scaled_input = scale_model_input(sample, t)
        model_output = randn(...)                  # stands in for a model
        out = step(model_output, t, sample, ...)   # stochastic noise supplied explicitly
        sample = out.prev_sample
Stochastic noise: `randn_tensor` in the scheduler's module is replaced by a function that draws
from a separate seeded generator and records the tensor as that step's noise (one draw per step
at most, or the generator stops with an error). The Rust harness passes the recorded noise to
Ember's step.

Tensors in the safetensors file (k = step number, counted from begin_index):
    sample                     initial sample (already multiplied by init_noise_sigma)
    model_output.k             model output fed to step k
    scaled_input.k             scale_model_input(sample_k, t_k)
    noise.k                    standard-normal noise drawn inside step k (stochastic steps only)
    prev_sample.k              step k's prev_sample
    pred_original_sample.k     step k's pred_original_sample (LCM: `denoised`), when returned
    add_noise.{original,noise,result}   add_noise (scale_noise for flow matching) on a fresh
                               scheduler after set_timesteps, at two schedule timesteps
    velocity.{sample,noise,result}      get_velocity, where the class has it
"""

import argparse
import inspect
import json
import math
import os
import sys
from pathlib import Path

import diffusers
import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scheduler_cases  # noqa: E402

DEFAULT_OUT = HERE.parent.parent / "crates" / "schedulers" / "tests" / "fixtures"
MAX_STEPS = 13  # PNDM's PRK warm-up alone is 12 evaluations; everything else is <= 12
EXPECTED_DIFFUSERS = "0.42.1"


class NoiseRecorder:
    """Replacement for diffusers' randn_tensor inside one scheduler module."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.step = None
        self.drawn = None

    def begin(self, k):
        self.step = k
        self.drawn = None

    def end(self):
        drawn, self.drawn, self.step = self.drawn, None, None
        return drawn

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        if self.step is None:
            raise RuntimeError("randn_tensor called outside of step()")
        if self.drawn is not None:
            raise RuntimeError(f"step {self.step} draws noise twice; the Ember contract allows one draw")
        noise = torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32)
        self.drawn = noise.clone()
        return noise.to(dtype=dtype or torch.float32)


def as_float(x):
    if isinstance(x, torch.Tensor):
        return float(x.item())
    return float(x)


def to_f64_list(x):
    return torch.as_tensor(x).detach().to(torch.float64).cpu().flatten().tolist()


def f32(t):
    return t.detach().to(torch.float32).cpu().contiguous().clone()


def json_safe(value, path, nonfinite):
    """Strict JSON: non-finite floats become null and are listed in `nonfinite`."""
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite[path] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {k: json_safe(v, k if not path else f"{path}.{k}", nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{path}[{i}]", nonfinite) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return json_safe(value.item(), path, nonfinite)
    return value


def full_config(sched):
    # to_json_string is exactly what diffusers writes as scheduler_config.json.
    cfg = json.loads(sched.to_json_string())
    cfg["_class_name"] = type(sched).__name__
    return cfg


def build(case):
    cls = getattr(diffusers, case["class_name"])
    return cls, cls(**case["config"])


def set_timesteps(sched, request):
    allowed = set(inspect.signature(sched.set_timesteps).parameters)
    unknown = set(request) - allowed
    if unknown:
        raise TypeError(f"{type(sched).__name__}.set_timesteps() takes no {sorted(unknown)}")
    sched.set_timesteps(**request)


def step_call(sched, model_output, t, sample, step_kwargs, generator):
    params = inspect.signature(sched.step).parameters
    kwargs = dict(step_kwargs)
    unknown = set(kwargs) - set(params)
    if unknown:
        raise TypeError(f"{type(sched).__name__}.step() takes no {sorted(unknown)}")
    if "generator" in params:
        kwargs["generator"] = generator
    return sched.step(model_output, t, sample, return_dict=True, **kwargs)


def model_output_for(case, sched, gen, shape):
    variance_type = sched.config.get("variance_type") if case["class_name"] == "DDPMScheduler" else None
    if variance_type in ("learned", "learned_range"):
        out = torch.randn(shape, generator=gen, dtype=torch.float32)
        if variance_type == "learned":
            # a variance, must be positive: uniform in [1e-4, 0.05)
            var = torch.rand(shape, generator=gen, dtype=torch.float32) * 0.05 + 1e-4
        else:
            # interpolation fraction (v + 1) / 2 with v in [-1, 1)
            var = torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0
        return torch.cat([out, var], dim=1)
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def check_finite(name, t):
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"{name} has non-finite values")


def run_case(case):
    shape = tuple(case["shape"])
    cls, sched = build(case)
    module = sys.modules[cls.__module__]
    recorder = NoiseRecorder(case["seed"] + 1)
    if not hasattr(module, "randn_tensor"):
        # The module never draws noise (Heun, LMS, KDPM2, PNDM, UniPC, DEIS, ...).
        return _run_case(case, cls, sched, shape, recorder)
    original_randn = module.randn_tensor
    module.randn_tensor = recorder
    try:
        return _run_case(case, cls, sched, shape, recorder)
    finally:
        module.randn_tensor = original_randn


def _run_case(case, cls, sched, shape, recorder):
    # The config a user's scheduler_config.json would hold: taken before set_timesteps, which
    # may rewrite it (DPMSolverSinglestep turns lower_order_final on, for instance).
    config_before = full_config(sched)
    gen = torch.Generator().manual_seed(case["seed"])
    step_gen = torch.Generator().manual_seed(case["seed"] + 2)  # passed where step() takes one; unused
    set_timesteps(sched, case["request"])
    timesteps = sched.timesteps
    sigmas = getattr(sched, "sigmas", None)
    # Flow-matching schedulers have no init_noise_sigma; their pipelines start from randn.
    has_init_noise_sigma = hasattr(sched, "init_noise_sigma")
    init_noise_sigma = as_float(sched.init_noise_sigma) if has_init_noise_sigma else 1.0
    has_scale_model_input = hasattr(sched, "scale_model_input")
    begin = case["begin_index"]
    set_begin_index_called = False
    if begin is not None:
        # DDIM-like schedulers have no set_begin_index: their steps depend on the timestep only,
        # and diffusers' img2img pipelines just iterate over timesteps[k:].
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
            set_begin_index_called = True
        run_ts = timesteps[begin:]
    else:
        run_ts = timesteps
    if len(run_ts) > MAX_STEPS:
        raise ValueError(f"{len(run_ts)} steps, more than {MAX_STEPS}")

    tensors = {}
    sample = torch.randn(shape, generator=gen, dtype=torch.float32) * init_noise_sigma
    tensors["sample"] = f32(sample)
    steps = []
    pos_source = "denoised" if case["class_name"] == "LCMScheduler" else "pred_original_sample"
    for k, t in enumerate(run_ts):
        # Flow-matching schedulers have no scale_model_input: the model sees the sample as is.
        scaled = sched.scale_model_input(sample, t) if has_scale_model_input else sample
        model_output = model_output_for(case, sched, gen, shape)
        recorder.begin(k)
        out = step_call(sched, model_output, t, sample, case["step_kwargs"], step_gen)
        noise = recorder.end()
        prev = out.prev_sample
        pos = getattr(out, pos_source, None)
        check_finite(f"step {k} prev_sample", prev)
        tensors[f"model_output.{k}"] = f32(model_output)
        tensors[f"scaled_input.{k}"] = f32(scaled)
        tensors[f"prev_sample.{k}"] = f32(prev)
        if noise is not None:
            tensors[f"noise.{k}"] = f32(noise)
        if pos is not None:
            check_finite(f"step {k} {pos_source}", pos)
            tensors[f"pred_original_sample.{k}"] = f32(pos)
        steps.append({
            "index": k,
            "timestep": as_float(t),
            "noise": noise is not None,
            "pred_original_sample": pos is not None,
        })
        sample = prev

    # add_noise / scale_noise on a fresh instance, one schedule timestep per batch sample.
    _, fresh = build(case)
    set_timesteps(fresh, case["request"])
    ts = fresh.timesteps
    idx = [0, len(ts) // 2][: shape[0]] + [len(ts) // 2] * max(0, shape[0] - 2)
    noise_ts = ts[idx]
    original = torch.randn(shape, generator=gen, dtype=torch.float32)
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    add_noise = None
    # `schedule_indices`: where in `timesteps` the values come from, so that a replay can pass
    # its own schedule's values, as a pipeline does (scheduler.timesteps[k]).
    if hasattr(fresh, "add_noise"):
        result = fresh.add_noise(original, noise, noise_ts)
        add_noise = {"method": "add_noise", "timesteps": to_f64_list(noise_ts), "schedule_indices": idx}
    elif hasattr(fresh, "scale_noise"):
        if "for t in timestep" not in inspect.getsource(type(fresh).scale_noise):
            # FlowMatchHeun's scale_noise takes one timestep for the whole batch
            idx = [len(ts) // 2]
            noise_ts = ts[idx[0]]
        result = fresh.scale_noise(original, noise_ts, noise)
        add_noise = {"method": "scale_noise", "timesteps": to_f64_list(noise_ts), "schedule_indices": idx}
    if add_noise is not None:
        check_finite("add_noise", result)
        tensors["add_noise.original"] = f32(original)
        tensors["add_noise.noise"] = f32(noise)
        tensors["add_noise.result"] = f32(result)

    velocity = None
    if hasattr(cls, "get_velocity"):
        _, fresh = build(case)
        set_timesteps(fresh, case["request"])
        if "index_for_timestep" in inspect.getsource(cls.get_velocity):
            # EulerDiscreteScheduler: get_velocity takes schedule timesteps
            vidx = [0, len(fresh.timesteps) // 2][: shape[0]] + [len(fresh.timesteps) // 2] * max(0, shape[0] - 2)
            vts = fresh.timesteps[vidx]
        else:
            # training timesteps, one per sample
            vidx = None
            T = fresh.config.num_train_timesteps
            vts = torch.tensor([10, T // 2][: shape[0]] + [T // 2] * max(0, shape[0] - 2), dtype=torch.int64)
        vsample = torch.randn(shape, generator=gen, dtype=torch.float32)
        vnoise = torch.randn(shape, generator=gen, dtype=torch.float32)
        vres = fresh.get_velocity(vsample, vnoise, vts)
        check_finite("get_velocity", vres)
        velocity = {"timesteps": to_f64_list(vts), "schedule_indices": vidx}
        tensors["velocity.sample"] = f32(vsample)
        tensors["velocity.noise"] = f32(vnoise)
        tensors["velocity.result"] = f32(vres)

    config_after = full_config(sched)
    changed = {k: v for k, v in config_after.items() if config_before.get(k) != v}
    nonfinite = {}
    config = json_safe(config_before, "", nonfinite)
    meta = {
        "name": case["name"],
        "class_name": case["class_name"],
        "about": case["about"],
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "config": config,
        "config_nonfinite": nonfinite,
        "overrides": case["config"],
        "request": case["request"],
        "step_kwargs": case["step_kwargs"],
        "begin_index": begin,
        "shape": list(shape),
        "model_output_shape": list(tensors["model_output.0"].shape) if steps else list(shape),
        "seed": case["seed"],
        "timesteps": to_f64_list(timesteps),
        "sigmas": to_f64_list(sigmas) if sigmas is not None else None,
        "init_noise_sigma": init_noise_sigma,
        "init_noise_sigma_attr": has_init_noise_sigma,
        "scale_model_input_attr": has_scale_model_input,
        "set_begin_index_called": set_begin_index_called,
        "config_changed_by_set_timesteps": json_safe(changed, "", {}),
        "order": int(sched.order),
        "pred_original_sample_source": pos_source,
        "steps": steps,
        "add_noise": add_noise,
        "velocity": velocity,
    }
    meta = json_safe(meta, "", {})  # nothing else may be non-finite; json.dumps(allow_nan=False) checks
    return meta, tensors


def check_dropped(entry):
    """Returns the diffusers error for a dropped combination, or None if it now runs."""
    try:
        run_case(entry)
    except Exception as e:  # noqa: BLE001 - any failure in diffusers is what we expect here
        return f"{type(e).__name__}: {e}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default=None, help="only cases whose name contains this")
    args = ap.parse_args()

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        sys.exit(f"diffusers {diffusers.__version__} installed, fixtures are pinned to {EXPECTED_DIFFUSERS}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    cases = scheduler_cases.CASES
    names = [c["name"] for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        sys.exit(f"duplicate case names: {sorted(dupes)}")
    if args.only:
        cases = [c for c in cases if args.only in c["name"]]
    args.out.mkdir(parents=True, exist_ok=True)

    failed = []
    total_bytes = 0
    for c in cases:
        try:
            meta, tensors = run_case(c)
        except Exception as e:  # report every broken case, then fail
            failed.append((c["name"], f"{type(e).__name__}: {e}"))
            print(f"FAIL {c['name']}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        jpath = args.out / f"{c['name']}.json"
        spath = args.out / f"{c['name']}.safetensors"
        jpath.write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
        save_file(tensors, str(spath), metadata={"source": f"diffusers {diffusers.__version__}, case {c['name']}"})  # one key: byte-reproducible header
        size = jpath.stat().st_size + spath.stat().st_size
        total_bytes += size
        n_noise = sum(s["noise"] for s in meta["steps"])
        print(f"ok   {c['name']:40s} {c['class_name']:34s} steps={len(meta['steps']):2d} "
              f"noise={n_noise:2d} {size / 1024:6.1f} KiB")

    if not args.only:
        for entry in scheduler_cases.DROPPED:
            err = check_dropped(entry)
            if err is None:
                failed.append((entry["name"], "listed in DROPPED but diffusers now runs it: make it a case"))
            else:
                print(f"drop {entry['name']}: {entry['reason']} (diffusers: {err.splitlines()[0][:120]})")

        stale = sorted(
            p.name for p in args.out.iterdir()
            if p.suffix in (".json", ".safetensors") and p.stem not in names
        )
        for s in stale:
            print(f"stale fixture (no such case), delete it: {s}", file=sys.stderr)
        if stale:
            failed.append(("stale", ", ".join(stale)))

    print(f"{len(cases) - sum(1 for n, _ in failed if n in names)} cases written to {args.out}, "
          f"{total_bytes / 1024:.0f} KiB")
    if failed:
        sys.exit("failed: " + "; ".join(f"{n}: {e}" for n, e in failed))


if __name__ == "__main__":
    main()
