"""A training run's folder as one object: :class:`RunFolder`. Every path inside a run comes from it.

    RUN_DIR/
      best/                              the best checkpoint (model.safetensors, geoseg.json, train_state.pt)
      checkpoint_*/                      Ray Train's checkpoints (the latest restores a rerun)
      checkpoint_manager_snapshot.json   Ray Train's record of them (where a rerun resumes)
      run.json                           the run record, written last
      chips/                             the chip cache (--chip-cache: elsewhere, or off)
      inputs/                            the VRTs of STAC items' bands
      labels/                            label rasters made from --label-vectors or instances
      curves.png, val_quicklook.png      pictures of the run
      model.onnx, model.pt, model.int8.onnx, ...   model files (geoseg export, geoseg quantize)
"""

from __future__ import annotations

from dataclasses import dataclass

from geoseg.data import storage


@dataclass(frozen=True)
class RunFolder:
    """The folder (local or ``s3://``) of one training run."""

    url: str

    def path(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    @property
    def best(self) -> str:
        return self.path("best")

    @property
    def latest(self) -> str:
        return self.path("latest")

    @property
    def record(self) -> str:
        """``run.json``: the run's summary, written last."""
        return self.path("run.json")

    @property
    def snapshot(self) -> str:
        """Ray Train's record of its checkpoints (the latest restores a rerun)."""
        return self.path("checkpoint_manager_snapshot.json")

    def checkpoint(self, name: str) -> str:
        """One of Ray Train's checkpoint folders, by name."""
        return self.path(name)

    @property
    def chips(self) -> str:
        """The chip cache's default place."""
        return self.path("chips")

    @property
    def inputs(self) -> str:
        """Where the VRTs of STAC items' bands go."""
        return self.path("inputs")

    def label(self, i: int, stem: str) -> str:
        """The label raster made for the ``i``-th image (from vectors or instances)."""
        return self.path("labels", f"{i}-{stem}.tif")

    @property
    def curves(self) -> str:
        return self.path("curves.png")

    @property
    def val_quicklook(self) -> str:
        return self.path("val_quicklook.png")

    def model_file(self, name: str) -> str:
        """A model file written into the run (``model.onnx``, ``model.int8.onnx``, ...)."""
        return self.path(name)
