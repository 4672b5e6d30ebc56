"""The training loop of one worker, without Ray: restore, LR schedule, an epoch, validation,
the time budget, checkpoints.

:class:`Fitter` holds one worker's state (model, optimiser, schedule, loss,
progress). It takes its batches from any iterable of ``{"image", "label"}``
torch tensors, and combines results across workers with ``torch.distributed``
when a process group is up; :mod:`geoseg.train.job` feeds it Ray Train's
dataset shards and reports its metrics, and ``benchmarks/train_quality.py``
runs the same :func:`train_epoch` in a plain loop.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np

from geoseg.models import checkpoint
from geoseg.train.augment import Augment, AugmentConfig
from geoseg.data.classes import NODATA
from geoseg.train.losses import make_loss
from geoseg.models.metrics import scores
from geoseg.models.predictor import as_float
from geoseg.train.plan import LoopConfig


def confusion_torch(pred, target, k: int, ignore: int = NODATA):
    """``(k, k)`` confusion matrix (rows: truth) of torch class maps, on their device."""
    import torch

    valid = target != ignore
    idx = target[valid] * k + pred[valid]
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


class LRSchedule:
    """Warm-up (5% of the steps) then cosine decay to 2% over ``total`` steps.

    ``total`` may be re-planned while training (the time budget); the factors are
    plain floats, so the scheduler's state stays ``weights_only``-safe.
    """

    def __init__(self, total: int):
        self.total = total

    def __call__(self, step: int) -> float:
        total = max(1, self.total)
        warm = max(1, int(0.05 * total))
        if step < warm:
            return 0.1 + 0.9 * step / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return float(0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress)))


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint's train state, restored on resume."""

    start_epoch: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)
    elapsed_before: float = 0.0
    resumed_at: int | None = None

    @classmethod
    def from_state(cls, state: dict, meta_epoch: int) -> "Progress":
        history = state.get("history", "[]")
        start = int(state.get("epoch", meta_epoch)) + 1
        return cls(start, float(state.get("best_miou", -1.0)),
                   json.loads(history) if isinstance(history, str) else [],
                   float(state.get("elapsed", 0.0)), start)


def train_epoch(model, batches, *, opt, loss_fn, augment, normalize, amp: dict, sched=None,
                on_batch=None, max_batches: int | None = None, stop=None) -> tuple[int, float, int, float]:
    """One pass over ``batches`` (the first ``max_batches`` of them, fewer where ``stop()`` says so
    after a batch); returns ``(chips, summed loss, batches, seconds waiting for data)``. Images may
    come in their raster's dtype and labels as uint8: ``normalize`` converts the images on their
    device, labels are widened there. ``on_batch(chips, mean loss)`` is called after each batch
    (progress display)."""
    import torch

    model.train()
    n_chips, loss_sum, n_batches, waited = 0, 0.0, 0, 0.0
    it = iter(batches)
    while max_batches is None or n_batches < max_batches:
        t_wait = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t_wait  # the step is synchronised below (float(loss))
        if batch is None:
            break
        x, y = augment(normalize(batch["image"]), batch["label"].long())
        with torch.autocast(**amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        n_chips += len(x)
        loss_sum += float(loss.detach())
        n_batches += 1
        if on_batch is not None:
            on_batch(n_chips, loss_sum / n_batches)
        if stop is not None and stop():
            break
    return n_chips, loss_sum, n_batches, waited


def _all_reduce(t, op: str = "sum"):
    """Sum (or max) a tensor over the workers when a process group is up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


class Fitter:
    """One worker's training: build with the model (weights restored), then per epoch
    :meth:`train_epoch`, :meth:`validate`, :meth:`end_epoch` and (rank 0) :meth:`save`."""

    def __init__(self, model, loop: LoopConfig, device, world: int = 1, state: dict | None = None,
                 meta_epoch: int = 0):
        import torch

        cfg = loop.cfg
        self.model, self.cfg, self.device, self.world = model, cfg, device, world
        self.mcfg, self.classes = loop.model, loop.classes
        self.loop_val_chips = loop.val_chips
        self.meta = loop.checkpoint_meta()  # what every checkpoint says of the model (its epoch added in save)
        self.progress = Progress.from_state(state, meta_epoch) if state else Progress()
        # --batch-size is the global batch, so a run takes the same optimizer steps
        # (and the same learning-rate schedule) whatever the number of workers.
        self.local_batch = max(1, cfg.batch_size // world)
        self.steps_per_epoch = max(1, cfg.chips_per_epoch // (self.local_batch * world))
        self.schedule = LRSchedule(self.steps_per_epoch * cfg.epochs)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.schedule)
        if state and state.get("optimizer"):
            self.opt.load_state_dict(state["optimizer"])
        if state and state.get("scheduler"):
            self.sched.load_state_dict(state["scheduler"])
        weights = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
        self.loss_fn = make_loss(cfg.loss, weights, NODATA)
        self.augment = Augment(AugmentConfig(**cfg.augment))
        self.mean = torch.tensor(loop.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(loop.std, device=device).view(1, -1, 1, 1).clamp_min(1e-6)
        cuda = getattr(device, "type", str(device)) == "cuda"
        self.amp = dict(device_type="cuda", dtype=torch.bfloat16) if cuda else dict(device_type="cpu", enabled=False)
        self.channels_last = cuda  # inputs in the model's layout (the caller converts a GPU model)
        self.t_start = time.time() - self.progress.elapsed_before
        self.next_steps = self.steps_per_epoch  # the coming epoch's steps (the last one may be cut to the budget)
        self._cycle_start = None  # when the last epoch's bookkeeping ended (the cycle measures validation, saving)
        self.confusion = None  # the last epoch's validation confusion matrix, all workers combined
        self.cut = False  # the last epoch ended early on the time budget

    def normalize(self, x):
        import torch

        x = (as_float(x) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_epoch(self, batches, on_batch=None) -> tuple[int, float, int]:
        first = self.cfg.max_minutes is not None and self._cycle_start is None
        stats = train_epoch(self.model, batches, opt=self.opt, loss_fn=self.loss_fn, augment=self.augment,
                            normalize=self.normalize, amp=self.amp, sched=self.sched, on_batch=on_batch,
                            max_batches=self.next_steps, stop=self._first_epoch_deadline() if first else None)
        self.cut = stats[2] < self.next_steps  # the budget ended the epoch early
        return stats

    def _first_epoch_deadline(self):
        """The time budget inside the run's first epoch, before any epoch was measured: training
        stops once what is left of the budget is what validation will take (its batches at a
        training step each, from the steps so far: on a CPU reading dominates) and the checkpoint (a tenth of the budget, at
        least 5 s). Every worker asks at every step, the slowest decides (one small all-reduce),
        so all take the same steps."""
        import torch

        end = self.t_start + self.cfg.max_minutes * 60
        around = max(5.0, 6.0 * self.cfg.max_minutes)
        val_batches = -(-self.loop_val_chips // max(1, self.local_batch * self.world))
        begun, steps = time.time(), [0]

        def stop() -> bool:
            steps[0] += 1
            now = time.time()
            validation = val_batches * (now - begun) / steps[0]  # a batch's read and forward: as long as a step
            late = torch.tensor([1.0 if now + validation + around >= end else 0.0], dtype=torch.float64,
                                device=self.device)
            return bool(_all_reduce(late, "max").item() > 0)

        return stop

    def validate(self, batches):
        """Confusion matrix over this worker's validation batches (on the device)."""
        import torch

        k = self.mcfg.num_classes
        cm = torch.zeros(k, k, dtype=torch.int64, device=self.device)
        self.model.eval()
        with torch.inference_mode():
            for batch in batches:
                with torch.autocast(**self.amp):
                    pred = self.model(self.normalize(batch["image"])).argmax(1)
                cm += confusion_torch(pred, batch["label"].long(), k, NODATA)
        return cm

    def end_epoch(self, epoch: int, stats: tuple, cm, seconds: float, t_epoch: float) -> tuple[dict, bool]:
        """Combine the workers' results; ``(metrics, stop)``. With a time budget, plan what is left of it
        from this epoch's step time and the time around the steps (validation, checkpoint): whole
        epochs, then one cut short to end with the budget (a sliver under a quarter epoch is left
        out); the learning rate's decay ends with the last planned step. Every worker plans from the
        same numbers (the slowest worker's), so all take the same steps and stop together."""
        import torch

        totals = _all_reduce(torch.tensor(stats, dtype=torch.float64, device=self.device))
        self.confusion = _all_reduce(cm).cpu().numpy()
        result = scores(self.confusion)
        now = time.time()
        elapsed = now - self.t_start
        metrics = epoch_metrics(epoch, totals.tolist(), result, seconds, elapsed, self.classes.names, self.world)
        p = self.progress
        p.best = max(p.best, metrics["val_miou"])
        p.history.append(metrics)
        # the budget's last epoch (planned short, or cut in the first epoch): the plan ends here
        cut_short = self.next_steps < self.steps_per_epoch or self.cut
        around = (now - (self._cycle_start or t_epoch)) - seconds
        self._cycle_start = now
        budget = self.cfg.max_minutes
        if budget is None:
            return metrics, False
        step_s, around, elapsed = _all_reduce(torch.tensor(
            [seconds / max(1, stats[2]), max(0.0, around), elapsed], dtype=torch.float64, device=self.device),
            "max").tolist()
        around *= 1.2  # the checkpoint written after this measure, and a margin
        remaining = budget * 60 - elapsed
        cycle = self.steps_per_epoch * step_s + around
        left = self.cfg.epochs - (epoch + 1)
        whole = max(0, min(left, int(remaining // max(cycle, 1e-9))))
        tail = int((remaining - whole * cycle - around) // max(step_s, 1e-9)) if whole < left else 0
        tail = min(tail, self.steps_per_epoch) if tail >= max(1, self.steps_per_epoch // 4) else 0
        stop = cut_short or (whole == 0 and tail == 0)
        self.next_steps = self.steps_per_epoch if whole else tail
        if not stop:  # the decay ends when the budget does
            self.schedule.total = int(self.sched.last_epoch) + whole * self.steps_per_epoch + tail
        return metrics, stop

    def save(self, folder: str, epoch: int, metrics: dict, stop: bool) -> None:
        """A self-describing checkpoint of this epoch (weights, description, train state)."""
        # how the bands were read (STAC assets stacked, scale/offset) and the instances target: the run's own
        meta = dataclasses.replace(self.meta, epoch=epoch, metrics=metrics, extra={
            "stopped_early": bool(stop), "resumed_at": self.progress.resumed_at, "world_size": self.world,
            **self.meta.extra})
        state = {
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch,
            "best_miou": self.progress.best,
            "history": json.dumps(self.progress.history),
            "elapsed": metrics["elapsed_s"],
        }
        checkpoint.save(folder, self.model, meta, state)


def epoch_metrics(epoch: int, totals: list, result: dict, seconds: float, elapsed: float, names,
                  world: int = 1) -> dict:
    """What each epoch reports: loss, validation mIoU / accuracy / Dice, per-class IoU, chips/s and
    the share of the training time the workers spent waiting for chips (``data_wait``).

    ``val_miou``, the metric that selects ``best/``, is the mean IoU over the classes labelled in the
    validation split (``SELECTION``): a class without a validation pixel has no IoU (``None``, listed
    in ``val_unlabelled``), never a 0 that a few stray predictions of it would bring in.
    ``val_miou_all`` is the usual mean (a class only predicted counts 0)."""
    chips, loss_sum, n_batches = totals[:3]
    waited = totals[3] if len(totals) > 3 else 0.0
    metrics = {
        "epoch": epoch,
        "train_loss": float(loss_sum / max(n_batches, 1)),
        "val_miou": float(np.nan_to_num(result["miou_labelled"])),
        "val_miou_all": float(np.nan_to_num(result["miou"])),
        "val_pixel_accuracy": float(np.nan_to_num(result["pixel_accuracy"])),
        "val_mean_dice": float(np.nan_to_num(result["mean_dice"])),
        "chips_per_s": float(chips / max(seconds, 1e-9)),
        "data_wait": float(min(1.0, waited / max(seconds * world, 1e-9))),
        "elapsed_s": elapsed,
    }
    labelled = np.asarray(result["support"]) > 0
    for i, name in enumerate(names):
        metrics[f"val_iou_{name}"] = float(np.nan_to_num(result["iou"][i])) if labelled[i] else None
    metrics["val_unlabelled"] = [str(n) for i, n in enumerate(names) if not labelled[i]]
    return metrics


SELECTION = {"metric": "val_miou", "over": "the classes labelled in the validation split",
             "order": "max"}
