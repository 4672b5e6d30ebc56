"""``geoseg train``: distributed training with Ray Train (TorchTrainer, DDP).

Chips flow to the workers through Ray Data (each worker gets its shard of
every epoch's chips); metrics come from a confusion matrix accumulated per
worker and all-reduced; every epoch writes a self-describing checkpoint (see
:mod:`geoseg.checkpoint`). Ray Train keeps the best ``num_to_keep`` by
validation mIoU, restarts lost workers from the last checkpoint
(``FailureConfig``), and rerunning the same command with the same ``--out``
resumes the run instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from geoseg import storage
from geoseg.augment import AugmentConfig
from geoseg.errors import InputError
from geoseg.losses import LOSSES
from geoseg.models.zoo import ARCHS


@dataclass(frozen=True)
class TrainConfig:
    images: list[str]
    labels: list[str]
    out: str
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # a local weights file; nothing is downloaded
    freeze_encoder: bool = False
    bands: list[int] | None = None
    band_roles: list[str] | None = None
    num_classes: int | None = None
    chip_size: int = 128
    block_size: int | None = None
    val_fraction: float = 0.2
    balanced: bool = True  # chips drawn towards rare classes (blocks weighted by inverse class frequency)
    chips_per_epoch: int = 512
    epochs: int = 10
    max_minutes: float | None = None
    batch_size: int = 16  # global batch: each of the N workers takes batch_size // N
    lr: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "ce+dice"
    class_weights: list[float] | None = None
    augment: dict = field(default_factory=dict)
    workers: int = 2
    gpus: bool = False
    cpus_per_worker: float | None = None  # default: leave a CPU for Ray Data's chip readers
    num_to_keep: int = 2
    placement_strategy: str = "PACK"  # or SPREAD: one worker per node where possible
    max_failures: int = 3
    seed: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        def bad(msg):
            raise InputError(msg)

        if self.arch not in ARCHS:
            bad(f"arch: unknown architecture {self.arch!r} (choose from {', '.join(ARCHS)})")
        if self.loss not in LOSSES:
            bad(f"loss: unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        for name in ("chip_size", "chips_per_epoch", "epochs", "batch_size", "workers", "num_to_keep"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 10:
            bad(f"lr must be a number in (0, 10), got {self.lr!r}")
        if not 0 < self.val_fraction < 1:
            bad(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            bad(f"max_minutes must be > 0, got {self.max_minutes!r}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            bad(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            bad(f"placement_strategy must be PACK or SPREAD, got {self.placement_strategy!r}")
        if self.max_failures < -1:
            bad(f"max_failures must be >= -1, got {self.max_failures!r}")
        AugmentConfig(**self.augment) if self.augment else None
        if self.encoder_weights and not os.path.exists(self.encoder_weights):
            bad(f"encoder_weights: {self.encoder_weights}: not found")

    @classmethod
    def from_sources(cls, yaml_path: str | None, overrides: dict) -> "TrainConfig":
        """Merge a YAML config with command-line overrides; unknown keys are errors."""
        data: dict = {}
        if yaml_path:
            import yaml

            try:
                loaded = yaml.safe_load(storage.read_text(yaml_path))
            except yaml.YAMLError as exc:
                raise InputError(f"{yaml_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                raise InputError(f"{yaml_path}: must be a mapping of option: value")
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(loaded) - known)
            if unknown:
                raise InputError(f"{yaml_path}: unknown option {unknown[0]!r}")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("images", "labels", "out"):
            if not data.get(key):
                raise InputError(f"missing {key} (give --{key[:-1] if key != 'out' else 'out'} or set it in --config)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"bad training option: {exc}") from None


# --- the per-worker training loop ------------------------------------------------


def _confusion_torch(pred, target, k: int, ignore: int):
    import torch

    valid = target != ignore
    idx = target[valid] * k + pred[valid]
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def train_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from geoseg import checkpoint as ckpt_io
    from geoseg.augment import Augment
    from geoseg.checkpoint import CheckpointMeta
    from geoseg.classes import NODATA, ClassScheme
    from geoseg.losses import make_loss
    from geoseg.metrics import format_table, scores
    from geoseg.models.zoo import ModelConfig, build_model

    cfg = TrainConfig(**config["cfg"])
    mcfg = ModelConfig(**config["model"])
    classes = ClassScheme.from_dict(config["classes"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    if not cuda and config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(cfg.seed + 1000 * rank)

    model = build_model(mcfg, cfg.encoder_weights, cfg.freeze_encoder)
    start_epoch, best, history, elapsed_before, resumed_at = 0, -1.0, [], 0.0, None
    opt_state = sched_state = None
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            loaded, meta, state = ckpt_io.load(d, with_state=True)
            model.load_state_dict(loaded.state_dict())
            if state:
                opt_state, sched_state = state.get("optimizer"), state.get("scheduler")
                start_epoch = int(state.get("epoch", meta.epoch)) + 1
                best = float(state.get("best_miou", -1.0))
                history = json.loads(state.get("history", "[]")) if isinstance(state.get("history"), str) else []
                elapsed_before = float(state.get("elapsed", 0.0))
                resumed_at = start_epoch
                if rank == 0:
                    print(f"resuming from the checkpoint of epoch {start_epoch - 1}", flush=True)
    model = ray.train.torch.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # --batch-size is the global batch, so a run takes the same optimizer steps
    # (and the same learning-rate schedule) whatever the number of workers.
    local_batch = max(1, cfg.batch_size // world)
    steps_per_epoch = max(1, cfg.chips_per_epoch // (local_batch * world))
    # Warm-up then cosine decay over the planned steps. With a time budget the plan is
    # re-estimated after the first epoch, so the decay ends when the budget does.
    plan_steps = {"total": steps_per_epoch * cfg.epochs}

    def lr_factor(step: int) -> float:
        total = max(1, plan_steps["total"])
        warm = max(1, int(0.05 * total))
        if step < warm:
            return 0.1 + 0.9 * step / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return float(0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress)))  # plain float: weights_only-safe state

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    if opt_state:
        opt.load_state_dict(opt_state)
    if sched_state:
        sched.load_state_dict(sched_state)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    loss_fn = make_loss(cfg.loss, weights, NODATA)
    augment = Augment(AugmentConfig(**cfg.augment))
    mean = torch.tensor(config["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, -1, 1, 1).clamp_min(1e-6)
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if cuda else dict(device_type="cpu", enabled=False)
    k = mcfg.num_classes
    t_start = time.time() - elapsed_before

    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.time()
        model.train()
        n_chips, loss_sum, n_batches = 0, 0.0, 0
        for batch in ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=local_batch, dtypes={"image": torch.float32, "label": torch.int64}, device=device
        ):
            x = (batch["image"] - mean) / std
            y = batch["label"]
            x, y = augment(x, y)
            with torch.autocast(**amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n_chips += len(x)
            loss_sum += float(loss.detach())
            n_batches += 1
        train_seconds = time.time() - t_epoch

        model.eval()
        cm = torch.zeros(k, k, dtype=torch.int64, device=device)
        with torch.inference_mode():
            for batch in ray.train.get_dataset_shard("val").iter_torch_batches(
                batch_size=local_batch, dtypes={"image": torch.float32, "label": torch.int64}, device=device
            ):
                x = (batch["image"] - mean) / std
                with torch.autocast(**amp):
                    pred = model(x).argmax(1)
                cm += _confusion_torch(pred, batch["label"], k, NODATA)
        stats = torch.tensor([n_chips, loss_sum, n_batches], dtype=torch.float64, device=device)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(cm)
            dist.all_reduce(stats)
        result = scores(cm.cpu().numpy())
        elapsed = time.time() - t_start
        metrics = {
            "epoch": epoch,
            "train_loss": float(stats[1] / max(stats[2], 1)),
            "val_miou": float(np.nan_to_num(result["miou"])),
            "val_pixel_accuracy": float(np.nan_to_num(result["pixel_accuracy"])),
            "val_mean_dice": float(np.nan_to_num(result["mean_dice"])),
            "chips_per_s": float(stats[0] / max(train_seconds, 1e-9)),
            "elapsed_s": elapsed,
        }
        for i, name in enumerate(classes.names):
            metrics[f"val_iou_{name}"] = float(np.nan_to_num(result["iou"][i]))
        best = max(best, metrics["val_miou"])
        history.append(metrics)
        # Stop early when the time budget would be exceeded by another epoch (same on all ranks).
        per_epoch = elapsed / max(1, epoch + 1 - start_epoch) if not restored else time.time() - t_epoch
        if world > 1 and dist.is_initialized():  # one plan for all ranks: identical learning rates
            pe = torch.tensor([per_epoch], dtype=torch.float64, device=device)
            dist.all_reduce(pe, op=dist.ReduceOp.MAX)
            per_epoch = float(pe.item())
        if cfg.max_minutes is not None:
            fit = max(epoch + 1, min(cfg.epochs, int(cfg.max_minutes * 60 / max(per_epoch, 1e-6))))
            plan_steps["total"] = steps_per_epoch * fit
        stop = cfg.max_minutes is not None and elapsed + per_epoch > cfg.max_minutes * 60
        if world > 1 and dist.is_initialized():  # every rank must take the same decision
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                print(f"epoch {epoch}: loss {metrics['train_loss']:.4f}, {metrics['chips_per_s']:.1f} chips/s")
                print(format_table(result, classes.names), flush=True)
                meta = CheckpointMeta(
                    model=mcfg,
                    classes=classes,
                    mean=config["mean"],
                    std=config["std"],
                    band_roles=config.get("band_roles"),
                    band_numbers=config.get("band_numbers"),
                    epoch=epoch,
                    metrics=metrics,
                    extra={"stopped_early": bool(stop), "resumed_at": resumed_at, "world_size": world},
                )
                state = {
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "best_miou": best,
                    "history": json.dumps(history),
                    "elapsed": elapsed,
                }
                ckpt_io.save(tmp, model, meta, state)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break


# --- the driver ------------------------------------------------------------------


def _storage(out: str):
    """``(storage_path, name, filesystem)`` for Ray Train's RunConfig from ``--out``."""
    out = out.rstrip("/")
    name = os.path.basename(out) or "run"
    if not storage.is_remote(out):
        parent = os.path.dirname(os.path.abspath(storage.local_path(out)))
        os.makedirs(parent, exist_ok=True)
        return parent, name, None
    import pyarrow.fs as pafs

    scheme, rest = out.split("://", 1)
    if scheme not in ("s3", "s3a"):
        return out.rsplit("/", 1)[0], name, None
    ep = storage.endpoint_url()
    kwargs = {}
    if ep:
        from urllib.parse import urlparse

        u = urlparse(ep)
        kwargs = {"endpoint_override": u.netloc, "scheme": u.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    fs = pafs.S3FileSystem(**kwargs)
    return rest.rsplit("/", 1)[0], name, fs


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) a training run; returns the run summary."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from geoseg import checkpoint as ckpt_io
    from geoseg.bands import resolve_roles
    from geoseg.datasets import open_pairs, plan_training, read_val_chips, sample_train_chips
    from geoseg.models.zoo import ModelConfig
    from geoseg.raster import read_info
    from geoseg.runtime import cluster_cpus, init_ray

    t0 = time.perf_counter()
    bands = cfg.bands
    roles = cfg.band_roles
    if bands is None:
        first = read_info(cfg.images[0])
        try:  # blue/green/red/nir known from band descriptions: train on those, by role
            mapping = resolve_roles(first.descriptions, None, cfg.images[0])
            roles = roles or list(mapping)
            bands = [mapping[r] for r in roles]
        except InputError:  # otherwise all bands, in file order
            bands = list(range(1, first.count + 1))
            roles = roles or (list(first.descriptions) if all(first.descriptions) else None)
    pairs = open_pairs(cfg.images, cfg.labels, bands)
    plan = plan_training(
        pairs,
        chip=cfg.chip_size,
        block=cfg.block_size,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        num_classes=cfg.num_classes,
        balanced=cfg.balanced,
        band_roles=roles,
    )
    mcfg = ModelConfig(cfg.arch, cfg.encoder, len(bands), len(plan.classes))
    init_ray(cfg.address)
    log(
        f"training {cfg.arch}/{cfg.encoder} on {len(pairs)} scene(s): {len(plan.train_blocks)} train blocks, "
        f"{len(plan.val_chips)} validation chips, classes {list(plan.classes.names)}"
    )
    # Chip numbers live in the object store (no read task to schedule); each epoch
    # re-executes the map, so every epoch draws fresh random chips.
    # (No 1-CPU read task either: with fractional train workers it might fit on no node.)
    train_ds = ray.data.from_items(
        [{"id": i} for i in range(cfg.chips_per_epoch)], override_num_blocks=max(2, cfg.chips_per_epoch // 64)
    )
    train_ds = train_ds.map_batches(sample_train_chips, fn_kwargs={"plan": plan}, batch_size=32, num_cpus=0.25)
    val_rows = [{"pair": int(p), "row": int(r), "col": int(c)} for p, r, c in plan.val_chips]
    val_ds = ray.data.from_items(val_rows, override_num_blocks=max(1, min(len(val_rows) // 32, 16)))
    val_ds = val_ds.map_batches(read_val_chips, fn_kwargs={"plan": plan}, batch_size=32, num_cpus=0.25)

    total = cluster_cpus()
    # Train workers must leave CPUs to Ray Data, or chip reading starves.
    cpus_per_worker = cfg.cpus_per_worker or max(0.25, min(1.0, (total - 1) / cfg.workers))
    threads = None if cfg.gpus else max(1, total // cfg.workers)
    storage_path, name, fs = _storage(cfg.out)
    loop_config = {
        "cfg": dataclasses.asdict(cfg),
        "model": mcfg.to_dict(),
        "classes": plan.classes.to_dict(),
        "mean": plan.mean,
        "std": plan.std,
        "band_roles": roles,
        "band_numbers": bands,
        "threads": threads,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpus,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if cfg.gpus else {})},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.num_to_keep,
                checkpoint_score_attribute="val_miou",
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": train_ds, "val": val_ds},
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    best_ckpt, best_metrics = None, None
    for ck, m in result.best_checkpoints or []:
        if best_metrics is None or m.get("val_miou", -1) > best_metrics.get("val_miou", -1):
            best_ckpt, best_metrics = ck, m
    best_ckpt = best_ckpt or result.checkpoint
    best_url = storage.join(cfg.out, "best")
    with best_ckpt.as_directory() as d:
        ckpt_io.copy_folder(d, best_url)
    latest = result.checkpoint
    summary = {
        "out": cfg.out,
        "best_checkpoint": best_url,
        "best": best_metrics or result.metrics,
        "last": result.metrics,
        "latest_checkpoint": latest.path if latest else None,
        "model": mcfg.to_dict(),
        "classes": plan.classes.to_dict(),
        "normalization": {"mean": plan.mean, "std": plan.std},
        "split": plan.info,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "address"},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    storage.write_text(storage.join(cfg.out, "run.json"), json.dumps(summary, indent=2, default=str))
    return summary
