"""Planning a training run, without Ray: :class:`RunPlan` (what to train on, and where it goes) and
:class:`LoopConfig` (what each worker's loop needs, typed).

:func:`plan_run` (the driver, before Ray starts) reads the images' metadata and chooses the
bands, makes label rasters from vectors or instances where asked, scans every label whole
(``scan``: on Ray, :func:`geoseg.train.job.scan_labels_on_ray`), splits the scenes into
spatial blocks and fixes the normalisation, all into one :class:`RunPlan`. Every path of the
run comes from its :class:`~geoseg.models.runfolder.RunFolder`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from geoseg.data import limits, storage
from geoseg.data.bands import WINDOW_TAG, select_bands, windows_of
from geoseg.data.classes import BOUNDARY, ClassScheme
from geoseg.data.inputs import ItemSelection, expand_inputs
from geoseg.data.masks import MaskSpec, mask_band
from geoseg.data.raster import read_info
from geoseg.data.stac import StackOptions
from geoseg.errors import InputError
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.models.runfolder import RunFolder
from geoseg.models.zoo import ModelConfig
from geoseg.train.config import TrainConfig
from geoseg.train.data import TrainingPlan, open_pairs, plan_training


@dataclass(frozen=True)
class LoopConfig:
    """What a worker's training loop needs: the options, the model, the classes, the
    normalisation, the bands, and what the checkpoints say of how the bands were read."""

    cfg: TrainConfig
    model: ModelConfig
    classes: ClassScheme
    mean: list
    std: list
    band_roles: list | None = None
    band_numbers: list | None = None
    threads: int | None = None  # torch threads of a CPU worker
    instances: dict | None = None  # the field-delineation target: {"boundary": BOUNDARY}
    inputs: dict = dataclasses.field(default_factory=dict)  # how the bands were read (STAC stacking, scales)
    init: str | None = None  # --init: the checkpoint whose weights the model starts from
    val_chips: int = 0  # validation chips of the split (a budget inside the first epoch leaves time for them)

    def checkpoint_meta(self) -> CheckpointMeta:
        """The description every checkpoint of the run carries (its epoch and metrics added per epoch)."""
        return CheckpointMeta(model=self.model, classes=self.classes, mean=self.mean, std=self.std,
                              band_roles=self.band_roles, band_numbers=self.band_numbers,
                              extra={"inputs": self.inputs or {},
                                     **({"instances": self.instances} if self.instances else {})})


@dataclass(frozen=True)
class RunPlan:
    """A training run planned: its folder, the training plan (pairs, split, normalisation,
    classes), the model, and the bands (numbers and roles)."""

    run: RunFolder
    training: TrainingPlan
    model: ModelConfig
    bands: list
    roles: list | None
    init: str | None = None  # --init: the checkpoint the weights start from

    def loop_config(self, cfg: TrainConfig, threads: int | None) -> LoopConfig:
        """The workers' loop config for ``cfg`` (resolved for the cluster)."""
        plan, first = self.training, self.training.pairs[0].image
        return LoopConfig(
            cfg=cfg, model=self.model, classes=plan.classes, mean=plan.mean, std=plan.std,
            band_roles=self.roles, band_numbers=self.bands, threads=threads, val_chips=len(plan.val_chips),
            init=self.init,
            # the field-delineation target: predict's class maps become instances (geoseg vectorize --instances)
            instances={"boundary": BOUNDARY} if cfg.instances else None,
            # how the bands were read, for predict to read them the same way
            inputs={**stack_options(cfg).fingerprint(), "scaled": any(p.image.scaled for p in plan.pairs),
                    "pixel_size": abs(first.transform[0]),
                    "scales": [first.scales[b - 1] for b in self.bands] if first.scales else None,
                    "offsets": [first.offsets[b - 1] for b in self.bands] if first.offsets else None,
                    # a multi-date model's windows and their dates, as its composites name them
                    **({"windows": {w: first.tags.get(f"{WINDOW_TAG}{w}") for w in windows_of(self.roles)}}
                       if windows_of(self.roles) else {})})


def with_init(cfg: TrainConfig) -> tuple[TrainConfig, CheckpointMeta | None, str | None]:
    """``--init RUN_DIR``: the earlier run's checkpoint, its description, and ``cfg`` with its model,
    classes (where the labels do not declare them) and bands; one line where they cannot be."""
    if not cfg.init:
        return cfg, None, None
    from geoseg.models import checkpoint

    url = checkpoint.locate(cfg.init)
    meta = checkpoint.describe(url)
    arch, encoder = meta.model.arch, meta.model.encoder
    if cfg.arch not in ("unet", arch) or cfg.encoder not in ("resnet18", encoder):
        raise InputError(f"--init {cfg.init}: its model is {arch}/{encoder}, not --arch {cfg.arch} --encoder "
                         f"{cfg.encoder}; leave them out to fine-tune it")
    changes: dict = {"arch": arch, "encoder": encoder}
    if not cfg.classes and not cfg.num_classes:
        changes["classes"] = list(meta.classes.names)
    if cfg.bands is None and (meta.band_roles or meta.band_numbers):
        changes["bands"] = list(meta.band_roles) if meta.band_roles else list(meta.band_numbers)
    return dataclasses.replace(cfg, **changes), meta, url


def check_init(planned: "RunPlan", meta: CheckpointMeta, url: str) -> "RunPlan":
    """The run fine-tunes ``meta``'s model: the same model, and its normalisation (the weights'
    inputs); one line where the run's model differs."""
    if planned.model != meta.model:
        raise InputError(f"--init {url}: its model ({meta.model.in_channels} bands, {meta.model.num_classes} classes) "
                         f"differs from this run's ({planned.model.in_channels} bands, {planned.model.num_classes} "
                         "classes)")
    training = dataclasses.replace(planned.training, mean=list(meta.mean), std=list(meta.std))
    return dataclasses.replace(planned, training=training, init=url)


def plan_run(cfg: TrainConfig, scan=None) -> RunPlan:
    """The run of ``cfg``: metadata, then each label's whole scan (``scan(pairs)``: the class
    histograms, e.g. :func:`geoseg.train.job.scan_labels_on_ray`; None: scanned here), then
    decimated reads."""
    storage.check_writable(cfg.out)
    run = RunFolder(cfg.out)
    mask = cfg.mask_spec
    images = [_image_url(url, cfg, run, mask) for url in cfg.images]
    first = read_info(images[0])
    skip = mask_band(images[0], first.descriptions, mask) if mask.active else None  # read for the mask only
    if cfg.assets and not cfg.bands:  # stacked STAC assets: exactly the bands asked for, named as asked
        bands, roles = [b for b in range(1, first.count + 1) if b != skip], list(cfg.assets)
    else:
        bands, roles = select_bands(images[0], first.descriptions, roles=cfg.band_roles, override=cfg.bands)
        if skip in bands:
            if cfg.bands:
                raise InputError(f"--bands: band {skip} of {images[0]} is the --mask band {mask.band!r}, "
                                 "not a model input")
            keep = [i for i, b in enumerate(bands) if b != skip]
            bands, roles = [bands[i] for i in keep], [roles[i] for i in keep] if roles else roles
    local_batch = cfg.local_batch
    limits.check_fits(limits.batch_bytes(local_batch, len(bands), cfg.chip_size, cfg.arch != "tinyfcn"),
                      f"--chip-size {cfg.chip_size} with a batch of {local_batch} per worker",
                      "use a smaller --chip-size or --batch-size")
    pairs = open_pairs(images, derived_labels(cfg, images, run), bands, cfg.allow_no_crs, mask)
    plan = plan_training(pairs, chip=cfg.chip_size, block=cfg.block_size, val_fraction=cfg.val_fraction,
                         seed=cfg.seed, num_classes=cfg.num_classes, class_names=cfg.classes,
                         balanced=cfg.balanced, band_roles=roles,
                         label_hists=scan(pairs) if scan is not None else None)
    return RunPlan(run, plan, ModelConfig(cfg.arch, cfg.encoder, len(bands), len(plan.classes)), bands, roles)


def derived_labels(cfg: TrainConfig, images: list[str], run: RunFolder) -> list[str]:
    """The label rasters to train on: ``--label`` as given, or made under ``RUN_DIR/labels`` from
    ``--label-vectors`` or from instances (:mod:`geoseg.train.targets`)."""
    from geoseg.train import targets

    if not cfg.label_vectors and not cfg.instances:
        return list(cfg.labels)
    if cfg.label_vectors and cfg.labels:
        raise InputError("give --label rasters or --label-vectors, not both")
    if not cfg.label_vectors and len(cfg.labels) != len(images):
        raise InputError(f"{len(images)} --image but {len(cfg.labels)} --label: give one instance raster per image")
    out = []
    for i, url in enumerate(images):
        info = read_info(url)
        dst = run.label(i, storage.stem(url))
        out.append(targets.from_vectors(cfg.label_vectors, info, dst, cfg.class_field, cfg.instances)
                   if cfg.label_vectors else targets.from_instances(cfg.labels[i], info, dst))
    return out


def stack_options(cfg: TrainConfig) -> StackOptions:
    return StackOptions(tuple(cfg.assets) if cfg.assets else None, cfg.resolution,
                        {k.lower(): v for k, v in (cfg.resampling or {}).items()} or None)


def _image_url(url: str, cfg: TrainConfig, run: RunFolder, mask: MaskSpec) -> str:
    """A training image: a raster, or a STAC item whose band assets are stacked in a VRT under
    ``RUN_DIR/inputs`` (with its ``--mask`` asset after them)."""
    urls = expand_inputs([url], None, stack_options(cfg), None, run.inputs, select=ItemSelection(mask.reads))
    if len(urls) != 1:
        raise InputError(f"{url}: gives {len(urls)} images; pair each --image with one --label")
    return urls[0]


def resume_point(run: RunFolder) -> dict | None:
    """Where a rerun of ``run`` resumes: the latest checkpoint Ray Train recorded in the run's
    snapshot (what it restores the workers from), ``{"epoch", "checkpoint"}``; None for a run
    not started yet."""
    try:
        snap = json.loads(storage.read_text(run.snapshot))
    except (OSError, ValueError):
        return None
    latest = snap.get("latest_checkpoint_result") or {}
    epoch = (latest.get("metrics") or {}).get("epoch")
    if epoch is None or not latest.get("checkpoint_dir_name"):
        return None
    return {"epoch": int(epoch), "checkpoint": run.checkpoint(latest["checkpoint_dir_name"])}
