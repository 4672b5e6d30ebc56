"""Training options: :class:`TrainConfig`, from flags and/or a YAML file."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from geoseg.data import storage
from geoseg.train.augment import AugmentConfig
from geoseg.data.bands import Selection
from geoseg.errors import InputError
from geoseg.train.losses import LOSSES
from geoseg.models.zoo import ARCHS

CPU_CHIP, CPU_BATCH = 128, 16
NUMBERS = ("num_classes", "chip_size", "block_size", "max_minutes", "batch_size", "cpus_per_worker", "resolution",
           "prefetch_batches")
# On a GPU: 512^2 chips (a U-Net/resnet34 step runs 139 MPix/s there on an H100 against 14 at 128^2,
# batch 16) and 16 of them per GPU in bf16 (a few GiB of activations: fits every data-centre GPU).
GPU_CHIP, GPU_BATCH_PER_WORKER = 512, 16


@dataclass(frozen=True)
class TrainConfig:
    images: list[str]
    labels: list[str]
    out: str
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # a local weights file; nothing is downloaded
    freeze_encoder: bool = False
    bands: Selection | None = None  # --bands: band numbers or a role map
    band_roles: list[str] | None = None  # the roles of the band numbers in `bands`, when they are numbers
    num_classes: int | None = None
    classes: list[str] | None = None  # --classes: the labels' classes, by name, numbered 0, 1, ... (declares them)
    chip_size: int | None = None  # default 128, or 512 with --gpus (fills a GPU)
    block_size: int | None = None
    val_fraction: float = 0.2
    balanced: bool = True  # chips drawn towards rare classes (blocks weighted by inverse class frequency)
    chips_per_epoch: int = 512
    epochs: int = 10
    max_minutes: float | None = None
    batch_size: int | None = None  # global batch (each of the N workers takes batch_size // N): 16, or 16 per GPU
    lr: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "ce+dice"
    class_weights: list[float] | None = None
    augment: dict = field(default_factory=dict)
    workers: int | None = None  # Ray Train workers; None: one per GPU with --gpus, else one per node (resolved_for)
    gpus: bool = False
    cpus_per_worker: float | None = None  # default: leave a CPU for Ray Data's chip readers
    num_to_keep: int = 2
    placement_strategy: str | None = None  # PACK or SPREAD; None: PACK with --gpus, SPREAD on CPUs
    max_failures: int = 3
    seed: int = 0
    address: str | None = None
    allow_no_crs: bool = False  # accept rasters without a CRS
    assets: list[str] | None = None  # --image STAC items with one asset per band: the bands to stack
    resolution: float | None = None  # pixel size of the stack (default: the finest band's)
    resampling: dict | None = None  # per band name (default bilinear, nearest for categorical bands)
    label_vectors: str | None = None  # polygons as labels: rasterized onto each image's grid (RUN_DIR/labels)
    class_field: str | None = None  # the label vectors' field holding class numbers or names
    instances: bool = False  # the field-delineation target: instance ids (or polygons) -> background/field/boundary
    chip_cache: str | None = None  # where blocks are decoded once (default RUN_DIR/chips; "off": read each chip)
    prefetch_batches: int | None = None  # batches read ahead of each step (default 4 on a GPU, 2 on CPU)
    mask: str | None = None  # --mask: a mask band of each image (scl, qa_pixel, ASSET:VALUES...); masked: no loss
    init: str | None = None  # --init RUN_DIR: start from an earlier run's weights (fine-tuning)

    @property
    def mask_spec(self):
        from geoseg.data.masks import parse_mask

        return parse_mask(self.mask if isinstance(self.mask, str) else None)

    def __post_init__(self) -> None:
        def bad(msg):
            raise InputError(msg)

        # local paths made absolute: Ray Train's workers and the run record read them from any folder
        for name in ("images", "labels"):
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, [storage.absolute(u) if isinstance(u, str) else u
                                                for u in getattr(self, name)])
        for name in ("out", "label_vectors", "init"):  # (label vectors: a comma-separated list too)
            if isinstance(getattr(self, name), str) and getattr(self, name):
                object.__setattr__(self, name, ",".join(storage.absolute(p.strip())
                                                        for p in getattr(self, name).split(",") if p.strip()))

        for f in dataclasses.fields(self):  # numbers must be numbers (a YAML file can hold anything)
            v = getattr(self, f.name)
            if isinstance(f.default, (int, float)) and not isinstance(f.default, bool) or f.name in NUMBERS:
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    bad(f"{f.name} must be a number, got {v!r}")
        if self.arch not in ARCHS:
            bad(f"arch: unknown architecture {self.arch!r} (choose from {', '.join(ARCHS)})")
        if self.loss not in LOSSES:
            bad(f"loss: unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.chip_size is None:  # frozen: defaults that depend on --gpus are set once, here
            object.__setattr__(self, "chip_size", GPU_CHIP if self.gpus else CPU_CHIP)
        if self.batch_size is None and (self.workers is not None or not self.gpus):
            object.__setattr__(self, "batch_size", (GPU_BATCH_PER_WORKER * self.workers) if self.gpus else CPU_BATCH)
        if self.placement_strategy is None:  # a CPU worker's threads take its node's cores: one per node
            object.__setattr__(self, "placement_strategy", "PACK" if self.gpus else "SPREAD")
        for name in ("chip_size", "chips_per_epoch", "epochs", "batch_size", "workers", "num_to_keep"):
            v = getattr(self, name)
            if v is None and name in ("workers", "batch_size"):  # resolved on the cluster (resolved_for)
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 10:
            bad(f"lr must be a number in (0, 10), got {self.lr!r}")
        if not 0 < self.val_fraction < 1:
            bad(f"val_fraction must be between 0 and 1, got {self.val_fraction!r}")
        if isinstance(self.classes, str):  # --classes a,b,c (YAML may give a list)
            object.__setattr__(self, "classes", [c.strip() for c in self.classes.split(",") if c.strip()])
        if self.classes is not None:
            if not self.classes or len(set(self.classes)) != len(self.classes):
                bad(f"classes must be distinct names, got {self.classes!r}")
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", len(self.classes))
            elif self.num_classes != len(self.classes):
                bad(f"--classes names {len(self.classes)} classes but --num-classes says {self.num_classes}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            bad(f"max_minutes must be > 0, got {self.max_minutes!r}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            bad(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            bad(f"placement_strategy must be PACK or SPREAD, got {self.placement_strategy!r}")
        if self.prefetch_batches is not None and (not isinstance(self.prefetch_batches, int)
                                                   or self.prefetch_batches < 1):
            bad(f"prefetch_batches must be a positive integer, got {self.prefetch_batches!r}")
        if self.chip_cache is not None and not isinstance(self.chip_cache, str):
            bad(f"chip_cache must be a folder or URL, or off, got {self.chip_cache!r}")
        if self.max_failures < -1:
            bad(f"max_failures must be >= -1, got {self.max_failures!r}")
        if self.mask_spec.kind == "model":
            bad("mask: training reads a mask band (scl, qa_pixel, ASSET:VALUES or ASSET:bits=BITS); the cloud "
                "model is predict's (geoseg predict --mask model)")
        AugmentConfig(**self.augment) if self.augment else None
        if self.encoder_weights and not os.path.exists(self.encoder_weights):
            bad(f"encoder_weights: {self.encoder_weights}: not found")

    @property
    def local_batch(self) -> int:
        """Each worker's share of the batch (before the cluster is known: the most it can be)."""
        if self.batch_size is None:
            return GPU_BATCH_PER_WORKER
        return max(1, self.batch_size // (self.workers or 1))

    def resolved_for(self, gpus: int, cpu_nodes: int) -> "TrainConfig":
        """The config with ``workers`` (and the batch it sets) fixed for a cluster of ``gpus`` GPUs and
        ``cpu_nodes`` nodes with CPUs: one worker per GPU with ``--gpus``; else one per node, each
        running its node's cores as threads (measured on 2 cores: one process of two threads trains
        4% more chips/s than two DDP workers of one, and its batch norm sees the whole batch)."""
        if self.workers is not None:
            return self
        return dataclasses.replace(self, workers=max(1, gpus if self.gpus else cpu_nodes))

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
            if key == "labels" and data.get("label_vectors"):
                data.setdefault("labels", [])
                continue
            if not data.get(key):
                raise InputError(f"missing {key} (give --{key[:-1] if key != 'out' else 'out'} or set it in --config)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"bad training option: {exc}") from None
