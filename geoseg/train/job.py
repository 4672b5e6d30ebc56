"""The Ray layer of ``geoseg train``: Ray Train's TorchTrainer (DDP) around :class:`Fitter`.

    plan_run (driver, plan.py)         bands, scene pairs (metadata: before Ray starts), every
                                       label scanned whole (Ray tasks, chunked: scan_labels_on_ray),
                                       spatial split, normalisation, class histogram
      -> build_chip_cache (Ray tasks)  every split block decoded once into the chip cache (resumable)
      -> ray.data datasets             training chips cut afresh each epoch, validation chips
      -> TorchTrainer(train_loop)      one Fitter per worker; DDP via ray.train.torch
      -> ray.train.report              metrics and (rank 0) a checkpoint every epoch
      -> best checkpoint, run.json     copied / written by the driver

Ray Train keeps the ``num_to_keep`` best checkpoints by validation mIoU,
restarts lost workers from the last checkpoint (``FailureConfig``), and a rerun
with the same ``--out`` resumes instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time

from geoseg.console import worker_print
from geoseg.data import storage
from geoseg.models import checkpoint
from geoseg.models.metrics import format_table, report
from geoseg.models.runfolder import RunFolder
from geoseg.models.zoo import build_model
from geoseg.execution.runtime import check_address, cluster_cpus, cluster_gpus, cpu_nodes, init_ray, require_gpus
from geoseg.train.config import TrainConfig
from geoseg.train.data import TrainingPlan, declared_classes, read_val_chips, sample_train_chips
from geoseg.train.fit import SELECTION, Fitter
from geoseg.train.plan import LoopConfig, check_init, plan_run, resume_point, with_init


def train_loop(config: dict) -> None:
    """One Ray Train worker: restore, then train / validate / report each epoch. ``config``:
    ``{"loop": LoopConfig}`` (Ray Train's train_loop_config)."""
    import ray.train
    import ray.train.torch
    import torch

    loop: LoopConfig = config["loop"]
    cfg = loop.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type != "cuda" and loop.threads:
        torch.set_num_threads(int(loop.threads))
    torch.manual_seed(cfg.seed + 1000 * rank)
    model = build_model(loop.model, cfg.encoder_weights, cfg.freeze_encoder)
    state, meta_epoch = None, 0
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            loaded, meta, state = checkpoint.load(d, with_state=True)
        model.load_state_dict(loaded.state_dict())
        meta_epoch = meta.epoch
    elif loop.init:  # --init: an earlier run's weights, fine-tuned from epoch 0
        model.load_state_dict(checkpoint.load(loop.init)[0].state_dict())
    if device.type == "cuda":  # bf16 convolutions are fastest channels-last
        model = model.to(memory_format=torch.channels_last)
    fitter = Fitter(ray.train.torch.prepare_model(model), loop, device, world, state, meta_epoch)

    # chips come in their raster's dtype (uint16: half of float32) and uint8 labels, and are converted on
    # the device (Fitter.normalize, train_epoch); the next batches are read while a step runs
    prefetch = cfg.prefetch_batches or (4 if device.type == "cuda" else 2)

    def shard(name: str):
        return ray.train.get_dataset_shard(name).iter_torch_batches(
            batch_size=fitter.local_batch, device=device, prefetch_batches=prefetch)

    for epoch in range(fitter.progress.start_epoch, cfg.epochs):
        t_epoch = time.time()
        stats = fitter.train_epoch(shard("train"), on_batch=_epoch_progress(epoch, cfg, world) if rank == 0 else None)
        seconds = time.time() - t_epoch
        cm = fitter.validate(shard("val"))
        metrics, stop = fitter.end_epoch(epoch, stats, cm, seconds, t_epoch)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                worker_print(f"epoch {epoch}: loss {metrics['train_loss']:.4f}, {metrics['chips_per_s']:.1f} chips/s, "
                             f"{100 * metrics['data_wait']:.0f}% of the time waiting for chips\n"
                             + format_table(report(fitter.confusion, fitter.classes.names)))
                fitter.save(tmp, epoch, metrics, stop)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if stop:
            break


def _epoch_progress(epoch: int, cfg: TrainConfig, world: int):
    """Rank 0's progress line within an epoch, every ``GEOSEG_PROGRESS_S`` seconds (10)."""
    every = float(os.environ.get("GEOSEG_PROGRESS_S", "10"))
    t0, last = time.time(), [time.time()]

    def show(chips: int, loss: float) -> None:
        now = time.time()
        if now - last[0] >= every:
            last[0] = now
            done = chips * world  # every worker takes the same share
            worker_print(f"epoch {epoch}: {done}/{cfg.chips_per_epoch} chips, loss {loss:.4f}, "
                         f"{done / max(now - t0, 1e-9):.1f} chips/s")

    return show


# --- the driver ------------------------------------------------------------------


def scan_labels_on_ray(pairs, num_classes: int | None, address: str | None, cache_url: str | None = None) -> list:
    """Every label raster scanned whole (:mod:`geoseg.train.labels`): a Ray task per chunk of
    each, all at once (a tenth of a CPU each: they mostly wait on storage); Ray is started
    here. Returns each raster's class histogram; refusals name the file, value and window.
    A chip cache whose manifest kept the scan of the same label files gives it at once."""
    import ray

    from geoseg.train import cache, labels

    k, source = declared_classes(pairs[0].label, num_classes)
    urls = [p.label.url for p in pairs]
    kept = cache.scanned_histograms(cache_url, urls, k)
    if kept is not None:
        return kept
    init_ray(address)
    scan = ray.remote(num_cpus=0.1)(labels.scan_chunk)
    refs = [[scan.remote(p.label.url, w, k) for w in labels.label_chunks(p.label)] for p in pairs]
    try:
        return [labels.merge_scans(p.label, ray.get(r), k, source) for p, r in zip(pairs, refs)]
    except ray.exceptions.RayTaskError as exc:  # a worker's own error (e.g. an unreadable block), as itself
        raise exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc


def build_chip_cache(cfg: TrainConfig, plan: TrainingPlan, label_hists: list, log=print) -> dict:
    """The run's chip cache (:mod:`geoseg.train.cache`): the blocks not yet built decoded in Ray
    tasks (a CPU each, neighbouring blocks together), the manifest written when all are there.
    Returns what the run record says of it; ``{}`` with ``--chip-cache off``."""
    import ray

    from geoseg.train import cache

    url = cache.cache_url(cfg.out, cfg.chip_cache)
    if url is None:
        return {}
    t0 = time.perf_counter()
    chips = cache.layout(url, plan.info["block"], plan.pairs)
    blocks = cache.plan_blocks(plan)
    k, _ = declared_classes(plan.pairs[0].label, cfg.num_classes)
    sigs = cache.signatures([u for p in chips.pairs for u in (p.image, p.label)])
    missing = cache.prepare(chips, blocks, sigs, cache.scan_record([p.label for p in chips.pairs], label_hists, k,
                                                                   sigs))
    total = sum(chips.block_bytes(b[0], b[3]) for b in blocks)
    if missing:
        log(f"chip cache: decoding {len(missing)} of {len(blocks)} blocks once "
            f"({sum(chips.block_bytes(b[0], b[3]) for b in missing) / 2**30:.2f} of {total / 2**30:.2f} GiB) "
            f"into {url}")
        task = ray.remote(num_cpus=1)(cache.build_blocks)
        refs = [task.remote(chips, group, len(plan.classes)) for group in cache.groups(missing)]
        try:
            ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        cache.write_manifest(chips, cache.fingerprint(chips, sigs), "complete", blocks)
    return {"cache": chips, "record": {"url": url, "blocks": len(blocks), "built": len(missing),
                                       "reused": len(blocks) - len(missing), "bytes": int(total),
                                       "seconds": round(time.perf_counter() - t0, 2)}}


def chip_datasets(cfg: TrainConfig, plan: TrainingPlan, cache=None) -> dict:
    """Ray Data datasets of training chips (fresh random chips each epoch) and validation chips,
    cut from the chip cache (None: read from the rasters)."""
    import ray

    # Chip numbers live in the object store (no read task to schedule); each epoch
    # re-executes the map, so every epoch draws fresh random chips.
    # (No 1-CPU read task either: with fractional train workers it might fit on no node.)
    # Blocks of 32 chips cut 16 at a time (32 MiB of 512² uint16 chips): measured the fastest through
    # Ray Data on 2 cores (467 chips/s against 390 with blocks of 64 cut 32 at a time).
    train_ds = ray.data.from_items(
        [{"id": i} for i in range(cfg.chips_per_epoch)], override_num_blocks=max(2, cfg.chips_per_epoch // 32)
    )
    kw = {"plan": plan, "cache": cache}
    train_ds = train_ds.map_batches(sample_train_chips, fn_kwargs=kw, batch_size=16, num_cpus=0.25)
    val_rows = [{"pair": int(p), "row": int(r), "col": int(c)} for p, r, c in plan.val_chips]
    val_ds = ray.data.from_items(val_rows, override_num_blocks=max(1, min(len(val_rows) // 32, 16)))
    val_ds = val_ds.map_batches(read_val_chips, fn_kwargs=kw, batch_size=32, num_cpus=0.25)
    return {"train": train_ds, "val": val_ds}


def make_trainer(cfg: TrainConfig, loop: LoopConfig, datasets: dict, cpus: int):
    """The TorchTrainer: workers, resources, checkpoint storage and failure policy."""
    import ray.train
    from ray.train.torch import TorchTrainer

    # Train workers must leave CPUs to Ray Data, or chip reading starves.
    cpus_per_worker = cfg.cpus_per_worker or max(0.25, min(1.0, (cpus - 1) / cfg.workers))
    path, fs = storage.arrow_filesystem(cfg.out.rstrip("/"))
    storage_path, name = path.rsplit("/", 1) if "/" in path else (".", path)
    if fs is None and not storage.is_remote(path):
        storage.makedirs(storage_path)
    return TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop},
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
        datasets=datasets,
    )


def _fit(trainer):
    """``trainer.fit()`` on a thread of its own while this one waits: Ctrl-C and SIGTERM then reach
    geoseg as in predict (one line, exit 130 / 143; the rerun resumes from the last checkpoint)
    instead of Ray Train's own SIGINT handler, which ends the process with exit 1 and no word
    (Ray Train installs it only when called from the main thread)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="geoseg-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short waits: signals are handled between them
    if "error" in box:
        raise box["error"]
    return box["result"]


def write_pictures(run: RunFolder, plan: TrainingPlan, latest, log=print) -> dict:
    """``curves.png`` (the whole history, kept in the latest checkpoint) and ``val_quicklook.png``
    (the best checkpoint on a validation block) in the run folder."""
    from geoseg.train.pictures import write_curves, write_val_quicklook

    with latest.as_directory() as d:
        _, _, state = checkpoint.load(d, with_state=True)
    history = json.loads(state.get("history") or "[]") if isinstance(state.get("history"), str) else []
    out = {"curves": write_curves(run.url, history, plan.classes),
           "val_quicklook": write_val_quicklook(run.url, plan, run.best)}
    for name, url in out.items():
        if url:
            log(f"{name}: {url}")
    return out


def train(cfg: TrainConfig, log=print) -> dict:
    """Run (or resume) a training run; returns the run summary (also in ``RUN_DIR/run.json``)."""
    t0 = time.perf_counter()
    check_address(cfg.address)
    # bad metadata fails before Ray starts; the labels' scan is Ray's first work
    from geoseg.train.cache import cache_url

    hists = []

    def scan(pairs):
        hists[:] = scan_labels_on_ray(pairs, cfg.num_classes, cfg.address, cache_url(cfg.out, cfg.chip_cache))
        return hists

    cfg, init_meta, init_url = with_init(cfg)
    planned = plan_run(cfg, scan)
    if init_meta is not None:
        planned = check_init(planned, init_meta, init_url)
        log(f"--init: fine-tuning {init_url} ({cfg.arch}/{cfg.encoder}, epoch {init_meta.epoch}, "
            f"val_miou {init_meta.metrics.get('val_miou', float('nan')):.3f})")
    plan, mcfg, run = planned.training, planned.model, planned.run
    log(
        f"training {cfg.arch}/{cfg.encoder} on {len(plan.pairs)} scene(s): {len(plan.train_blocks)} train blocks, "
        f"{len(plan.val_chips)} validation chips, classes {list(plan.classes.names)}"
    )
    if plan.info.get("classes_from", "").startswith("the label values"):  # nothing declared them: say what was found
        log("classes from the label values (no CLASS_NAMES tag, --classes or --num-classes): " + ", ".join(
            f"{name} ({n:,} px)" for name, n in plan.info["class_pixels"].items()))
    for note in plan.info.get("split_notes", []):  # a class the split cannot show on both sides
        log(note)
    if "masked" in plan.info:  # --mask: how much of each scene's labels the mask hides
        shares = plan.info["masked"]["fraction_of_labelled"]
        log(f"--mask {plan.info['masked']['source']}: " + ", ".join(
            f"{storage.stem(u)} {100 * f:.1f} %" for u, f in list(shares.items())[:10])
            + " of the labelled pixels masked (left out of the loss)" + (" ..." if len(shares) > 10 else ""))
    init_ray(cfg.address)
    require_gpus(1 if cfg.gpus else 0, "--gpus")
    cfg = cfg.resolved_for(cluster_gpus(), cpu_nodes())
    chips = build_chip_cache(cfg, plan, hists, log)
    cpus = cluster_cpus()
    threads = None if cfg.gpus else max(1, cpus // cfg.workers)
    log(f"{cfg.workers} Ray Train worker(s), " + (f"a GPU each, batch {cfg.local_batch} each" if cfg.gpus
                                                  else f"{threads} threads each, batch {cfg.local_batch} each"))
    loop = planned.loop_config(cfg, threads)
    resumed = resume_point(run)
    if resumed:
        log(f"resuming from the checkpoint of epoch {resumed['epoch']} ({resumed['checkpoint']})")
    result = _fit(make_trainer(cfg, loop, chip_datasets(cfg, plan, chips.get("cache")), cpus))
    if result.error:
        raise result.error
    best_ckpt, best_metrics = None, None
    for ck, m in result.best_checkpoints or []:
        if best_metrics is None or m.get("val_miou", -1) > best_metrics.get("val_miou", -1):
            best_ckpt, best_metrics = ck, m
    best_ckpt = best_ckpt or result.checkpoint
    with best_ckpt.as_directory() as d:
        checkpoint.copy_folder(d, run.best)
    pictures = write_pictures(run, plan, result.checkpoint or best_ckpt, log)
    summary = {
        "out": cfg.out,
        "best_checkpoint": run.best,
        "best": best_metrics or result.metrics,
        # what picked best/: the mean IoU over the classes labelled in validation (others listed)
        "selection": {**SELECTION, "unlabelled_in_validation": (best_metrics or result.metrics or {}).get(
            "val_unlabelled", [])},
        "last": result.metrics,
        "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": mcfg.to_dict(),
        "classes": plan.classes.to_dict(),
        "normalization": {"mean": plan.mean, "std": plan.std},
        "split": plan.info,
        # where the chips came from, and how fast the workers took them (the last epoch)
        "input": {"chip_cache": chips.get("record"),
                  "chips_per_s": (result.metrics or {}).get("chips_per_s"),
                  "data_wait": (result.metrics or {}).get("data_wait")},
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "address"},
        "pictures": pictures,
        "resumed": resumed,  # the checkpoint this run resumed from (None: it started afresh)
        # --init: the earlier run's checkpoint the weights started from (fine-tuning), else None
        "init": {"from": init_url, "epoch": init_meta.epoch, "val_miou": init_meta.metrics.get("val_miou")}
        if init_meta is not None else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    storage.write_text(run.record, json.dumps(summary, indent=2, default=str))
    return summary
