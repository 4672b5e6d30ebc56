"""A heterogeneous cluster: model actors on the GPU nodes, readers and writers on the others."""

import numpy as np
import pytest
import rasterio
import torch

from geoseg.models import checkpoint
from geoseg.models.checkpoint import CheckpointMeta
from geoseg.data.classes import LANDCOVER
from geoseg.models.zoo import ModelConfig, build_model
from geoseg.predict import PredictOptions, predict


@pytest.fixture()
def gpu_cluster():
    """Head (1 CPU), a 'GPU node' (1 CPU, 1 logical GPU: the model then runs on its CPU)
    and a CPU-only node (2 CPUs), made with ray.cluster_utils.Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from geoseg.execution import runtime

    runtime.shutdown()  # geoseg's own local Ray too
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
    cpu_node = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster, gpu_node, cpu_node
    ray.shutdown()
    cluster.shutdown()


def test_model_actors_on_gpu_nodes_readers_and_writers_elsewhere(gpu_cluster, sample_dir, tmp_path):
    cluster, gpu_node, cpu_node = gpu_cluster
    cfg = ModelConfig("tinyfcn", in_channels=4, num_classes=4)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "ckpt")
    checkpoint.save(ckpt, build_model(cfg), CheckpointMeta(cfg, LANDCOVER, [1000.0] * 4, [500.0] * 4))
    (rec,) = predict([str(sample_dir / "scene.tif")], str(tmp_path / "out"),
                     PredictOptions(checkpoint=ckpt, tile_size=128, halo=16))
    placement = rec["placement"]
    assert placement["gpus_per_actor"] == 1.0 and placement["actors"] == [1, 1]  # one actor per GPU
    nodes = placement["nodes"]
    assert nodes["infer"] == [gpu_node.node_id]  # the model only where the GPU is
    assert nodes["read"] and gpu_node.node_id not in nodes["read"]
    assert nodes["write"] and gpu_node.node_id not in nodes["write"]
    assert rec["tiles"]["predicted"] + rec["tiles"]["nodata_skipped"] == 25
    with rasterio.open(tmp_path / "out" / "scene.tif") as cog:
        assert set(np.unique(cog.read(1))) <= {0, 1, 2, 3, 255}


def test_actor_layout_and_worker_range():
    from geoseg.predict.layout import actor_layout

    deep = PredictOptions(checkpoint="x")
    gpu = actor_layout(deep, True, cpus=32, gpus=4)
    assert (gpu.min_workers, gpu.max_workers, gpu.num_gpus, gpu.calls) == (4, 4, 1.0, 1)
    pool = actor_layout(PredictOptions(checkpoint="x", workers=(1, 3)), True, cpus=32, gpus=4)
    assert (pool.min_workers, pool.max_workers) == (1, 3)
    # CPU: one actor per 8 cores, each running one single-threaded call per core, a CPU left to the readers
    cpu = actor_layout(deep, True, cpus=2, gpus=0)
    assert (cpu.min_workers, cpu.calls, cpu.threads, cpu.num_gpus, cpu.num_cpus) == (1, 2, 1, 0.0, 1.0)
    big = actor_layout(deep, True, cpus=32, gpus=0)
    assert (big.max_workers, big.calls) == (4, 8) and big.num_cpus == 31 / 4
    # geoseg's own local Ray, model on CPU: no actors, the driver runs the model
    here = actor_layout(deep, True, cpus=2, gpus=0, local=True)
    assert (here.driver, here.calls, here.threads, here.readers, here.num_cpus) == (True, 2, 1, 1, 0.0)
    index = actor_layout(PredictOptions(model="index"), False, cpus=16, gpus=0, local=True)
    assert (index.driver, index.readers) == (True, 15)
    assert not actor_layout(PredictOptions(checkpoint="x", workers=1), True, cpus=2, gpus=0, local=True).driver
    assert not actor_layout(deep, True, cpus=16, gpus=1, local=True).driver  # a GPU: a GPU actor
    with pytest.raises(Exception, match="MIN <= MAX"):
        PredictOptions(model="index", workers=(3, 1))


def test_gpu_training_defaults():
    from geoseg.train import TrainConfig

    base = dict(images=["a.tif"], labels=["b.tif"], out="run")
    assert (TrainConfig(**base).chip_size, TrainConfig(**base).batch_size) == (128, 16)
    gpu = TrainConfig(**base, gpus=True, workers=4)
    assert (gpu.chip_size, gpu.batch_size) == (512, 64)
    assert TrainConfig(**base, gpus=True, chip_size=256, batch_size=8).chip_size == 256
