"""Worker failures on a multi-node local Ray: a node lost in the middle of ``predict`` costs
retries, never pixels (training's counterpart is in test_train.py)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import rasterio

from geoseg.predict import PredictOptions, predict


@pytest.mark.slow
def test_lost_worker_node_mid_predict_gives_the_clean_output(multi_node, sample_dir, tmp_path):
    cluster, nodes = multi_node(head_cpus=1, workers=2)
    scene = str(sample_dir / "scene.tif")
    opts = PredictOptions(model="index", tile_size=64, halo=8, batch_size=2, workers=2)
    predict([scene], str(tmp_path / "clean"), opts)
    result: dict = {}

    def job():
        try:
            result["records"] = predict([scene], str(tmp_path / "o"), opts)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    progress = tmp_path / "o" / ".geoseg" / "scene"
    deadline = time.time() + 300
    while time.time() < deadline and runner.is_alive():
        if progress.exists() and sum(n.startswith("done-") for n in os.listdir(progress)) >= 3:
            break
        time.sleep(0.05)
    assert runner.is_alive(), result
    cluster.remove_node(nodes[0])  # a preempted machine: its readers, model actor and writers die
    cluster.add_node(num_cpus=1)  # the replacement an autoscaler would bring
    runner.join(timeout=400)
    assert not runner.is_alive() and "error" not in result, result.get("error")
    (rec,) = result["records"]
    assert rec["status"] == "complete" and rec["tiles"]["resumed"] == 0  # one job, no rerun
    with rasterio.open(tmp_path / "clean" / "scene.tif") as a, rasterio.open(tmp_path / "o" / "scene.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
