"""Training on a real multi-node Ray cluster (ray.cluster_utils.Cluster), checkpoints, resume."""

import json
import os
import pickle
import threading
import time

import numpy as np
import pytest
import rasterio

from geoseg.models import checkpoint
from geoseg.errors import CheckpointError, InputError, RasterError
from geoseg.train import TrainConfig, train

SMALL = dict(chip_size=64, block_size=128, chips_per_epoch=32, batch_size=8, workers=2, num_to_keep=2)


def _cfg(sample_dir, out, **kw):
    return TrainConfig(
        images=[str(sample_dir / "scene.tif")], labels=[str(sample_dir / "labels.tif")], out=str(out), **{**SMALL, **kw}
    )


@pytest.mark.slow
def test_two_workers_on_two_nodes_then_predict(ray_cluster, sample_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(_cfg(sample_dir, out, arch="unet", encoder="resnet18", epochs=2, placement_strategy="SPREAD", cpus_per_worker=0.75))
    assert summary["last"]["epoch"] == 1
    assert 0 <= summary["best"]["val_miou"] <= 1 and summary["best"]["chips_per_s"] > 0
    model, meta, state = checkpoint.load(str(out), with_state=True)
    assert meta.model.arch == "unet" and meta.model.in_channels == 4 and meta.model.num_classes == 4
    assert list(meta.classes.names) == ["bare_soil", "vegetation", "water", "built_up"]
    assert len(meta.mean) == 4 and all(s > 0 for s in meta.std)
    assert meta.band_roles == ["blue", "green", "red", "nir"] and meta.extra["world_size"] == 2
    assert state["epoch"] in (0, 1) and "optimizer" in state
    run = json.loads((out / "run.json").read_text())
    assert run["best_checkpoint"].endswith("best")
    # every block of the split decoded once into the chip cache; how the workers were fed
    cache = run["input"]["chip_cache"]
    assert cache["url"] == str(out / "chips") and cache["built"] == cache["blocks"] > 0 and cache["reused"] == 0
    assert 0 <= run["input"]["data_wait"] <= 1 and run["input"]["chips_per_s"] > 0
    assert json.loads((out / "chips" / "cache.json").read_text())["state"] == "complete"
    # num_to_keep=2: Ray Train keeps at most two epoch checkpoints
    assert len([p for p in os.listdir(out) if p.startswith("checkpoint_") and (out / p).is_dir()]) <= 2

    # checkpoint -> predict needs no other model flags
    from geoseg.predict import PredictOptions, predict

    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "pred"),
                     PredictOptions(checkpoint=str(out), tile_size=256, halo=32))
    with rasterio.open(tmp_path / "pred" / "scene.tif") as cog:
        classes = cog.read(1)
    assert classes.shape == (640, 640)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 255}
    assert rec["tiles"]["predicted"] > 0


@pytest.mark.slow
def test_lost_worker_node_resumes_from_checkpoint(multi_node, sample_dir, tmp_path):
    """A node running a train worker dies mid-run; Ray Train restarts from the last checkpoint."""
    # The head runs no work (as on real clusters); each worker node fits exactly one train worker.
    cluster, nodes = multi_node(head_cpus=0, workers=2)
    out = tmp_path / "run"
    cfg = _cfg(sample_dir, out, arch="tinyfcn", epochs=4, max_failures=3, cpus_per_worker=0.75)
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=train(cfg)), daemon=True)
    runner.start()
    deadline = time.time() + 300
    # two checkpoints on disk: the first one is surely registered with Ray Train by now
    while time.time() < deadline and not (
        out.exists() and sum(p.startswith("checkpoint_") and (out / p).is_dir() for p in os.listdir(out)) >= 2
    ):
        time.sleep(0.2)
    cluster.remove_node(nodes[0])  # it holds one of the two train workers
    cluster.add_node(num_cpus=1)  # the replacement an autoscaler would bring
    runner.join(timeout=400)
    assert not runner.is_alive()
    assert result["summary"]["last"]["epoch"] == 3
    latest = sorted(p for p in os.listdir(out) if p.startswith("checkpoint_") and (out / p).is_dir())[-1]
    _, last_meta = checkpoint.load(str(out / latest))
    assert last_meta.extra["resumed_at"] is not None and last_meta.extra["resumed_at"] >= 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/geoseg-pwned",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    import torch

    from geoseg.models.checkpoint import CheckpointMeta, save
    from geoseg.data.classes import LANDCOVER
    from geoseg.models.weights import load_weights
    from geoseg.models.zoo import ModelConfig, build_model

    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    folder = tmp_path / "ckpt"
    save(str(folder), build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [0.0] * 4, [1.0] * 4))
    with open(folder / "train_state.pt", "wb") as f:
        pickle.dump({"optimizer": _Evil()}, f)
    if os.path.exists("/tmp/geoseg-pwned"):
        os.remove("/tmp/geoseg-pwned")
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(str(folder), with_state=True)
    evil_weights = tmp_path / "encoder.pt"
    torch.save({"x": _Evil()}, evil_weights)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(str(evil_weights))
    assert not os.path.exists("/tmp/geoseg-pwned")
    # weights alone still load safely (safetensors)
    model, meta = checkpoint.load(str(folder))
    assert meta.model == cfg


def test_config_validation(tmp_path):
    yml = tmp_path / "train.yaml"
    yml.write_text("images: [a.tif]\nlabels: [b.tif]\nout: run\nepochz: 3\n")
    with pytest.raises(InputError, match="unknown option 'epochz'"):
        TrainConfig.from_sources(str(yml), {})
    yml.write_text("images: [a.tif]\nlabels: [b.tif]\nout: run\nepochs: -1\n")
    with pytest.raises(InputError, match="epochs must be a positive integer"):
        TrainConfig.from_sources(str(yml), {})
    yml.write_text("images: [a.tif]\nlabels: [b.tif]\nout: run\nepochs: 2\narch: unet\n")
    cfg = TrainConfig.from_sources(str(yml), {"epochs": 5, "arch": None})
    assert cfg.epochs == 5 and cfg.arch == "unet"
    with pytest.raises(InputError, match="arch"):
        TrainConfig.from_sources(str(yml), {"arch": "transformer9000"})


def test_workers_default_to_one_per_gpu_or_one_per_node():
    base = dict(images=["a.tif"], labels=["b.tif"], out="run")
    cpu = TrainConfig(**base)
    assert cpu.workers is None and cpu.placement_strategy == "SPREAD" and cpu.batch_size == 16
    assert cpu.resolved_for(gpus=0, cpu_nodes=1).workers == 1  # a laptop: one process, all its cores
    assert cpu.resolved_for(gpus=0, cpu_nodes=3).workers == 3
    gpu = TrainConfig(**base, gpus=True)
    assert gpu.batch_size is None and gpu.local_batch == 16 and gpu.placement_strategy == "PACK"
    on8 = gpu.resolved_for(gpus=8, cpu_nodes=2)
    assert (on8.workers, on8.batch_size, on8.local_batch) == (8, 128, 16)
    assert TrainConfig(**base, workers=2).resolved_for(gpus=0, cpu_nodes=5).workers == 2  # as asked


def test_pairs_must_share_a_grid(tmp_path, sample_dir):
    from geoseg.train.data import open_pairs

    with rasterio.open(sample_dir / "labels.tif") as src:
        profile, data = src.profile, src.read()
    profile.update(transform=profile["transform"] * profile["transform"].translation(5, 0), driver="GTiff")
    with rasterio.open(tmp_path / "shifted.tif", "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(RasterError, match="scene.tif and .*shifted.tif do not share a grid"):
        open_pairs([str(sample_dir / "scene.tif")], [str(tmp_path / "shifted.tif")])


def test_spatial_split_never_mixes_blocks(sample_dir):
    from geoseg.train.data import open_pairs, plan_training

    pairs = open_pairs([str(sample_dir / "scene.tif")], [str(sample_dir / "labels.tif")])
    plan = plan_training(pairs, chip=64, block=128, val_fraction=0.3, seed=1)
    train_blocks = {(int(r), int(c)) for _, r, c, _ in plan.train_blocks}
    for _, r, c in plan.val_chips:
        assert (r // 128 * 128, c // 128 * 128) not in train_blocks
        assert r % 128 + 64 <= 128 and c % 128 + 64 <= 128  # chips stay inside their block
    assert len(train_blocks) > len({(r // 128, c // 128) for _, r, c in plan.val_chips})
    assert abs(sum(plan.class_freq) - 1) < 1e-9


def _fitter(max_minutes, chips_per_epoch=64, batch_size=16, epochs=100):
    import torch

    from geoseg.data.classes import LANDCOVER
    from geoseg.models.zoo import ModelConfig, build_model
    from geoseg.train.fit import Fitter
    from geoseg.train.plan import LoopConfig

    cfg = TrainConfig(images=["a.tif"], labels=["b.tif"], out="run", arch="tinyfcn", chips_per_epoch=chips_per_epoch,
                      batch_size=batch_size, epochs=epochs, max_minutes=max_minutes, workers=1)
    mcfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    return Fitter(build_model(mcfg), LoopConfig(cfg, mcfg, LANDCOVER, [0.0] * 4, [1.0] * 4), torch.device("cpu"))


def test_a_time_budget_is_planned_to_its_end_and_the_last_epoch_is_cut_to_fit():
    """Whole epochs while they fit, then one cut short to end with the budget; the learning
    rate's decay ends with the last planned step."""
    import torch

    from geoseg.train.fit import train_epoch

    f = _fitter(max_minutes=1.0)  # 60 s; 64 chips per epoch in batches of 16: 4 steps
    assert (f.steps_per_epoch, f.next_steps) == (4, 4)
    cm = torch.zeros(4, 4, dtype=torch.int64)
    now = time.time()
    # epoch 0 ended 20 s into the budget: 8 s of steps (2 s each) and 2 s of validation around them
    f.t_start = now - 20
    metrics, stop = f.end_epoch(0, (64, 1.0, 4, 0.0), cm, 8.0, now - 10)
    # each epoch takes 8 + 2 * 1.2 s: three whole ones fit in the 40 s left, then 3 steps of the fourth
    assert not stop and f.next_steps == 4
    assert f.schedule.total == int(f.sched.last_epoch) + 3 * 4 + 3
    # at the last whole epoch's end 10 s are left: the next one is cut to 3 steps, and is the last
    now = time.time()
    f.t_start, f._cycle_start = now - 50, now - 10.4  # the last cycle: 8 s of steps, 2.4 s around them
    _, stop = f.end_epoch(3, (64, 1.0, 4, 0.0), cm, 8.0, now - 10.4)
    assert not stop and f.next_steps == 3
    # the cut epoch takes exactly its steps from the data, then the run stops
    batches = ({"image": torch.rand(16, 4, 32, 32), "label": torch.randint(0, 4, (16, 32, 32))} for _ in range(9))
    chips, _, n, _ = train_epoch(f.model, batches, opt=f.opt, loss_fn=f.loss_fn, augment=f.augment,
                                 normalize=f.normalize, amp=f.amp, sched=f.sched, max_batches=f.next_steps)
    assert (chips, n) == (48, 3)
    _, stop = f.end_epoch(4, (48, 1.0, 3, 0.0), cm, 6.0, time.time() - 8.4)
    assert stop
    # a remainder under a quarter of an epoch is not worth its validation: the run stops at once
    g = _fitter(max_minutes=0.5, chips_per_epoch=256)  # 16 steps of 1 s, 30 s budget
    now = time.time()
    g.t_start = now - 27
    _, stop = g.end_epoch(0, (256, 1.0, 16, 0.0), cm, 16.0, now - 17)
    assert stop  # 3 s left: 1 step after the time around it, under a quarter of 16
