"""``geoseg predict``: segment rasters tile by tile, stitched into Zarr and COG outputs.

Read top to bottom:

    plan.py    no Ray   PredictOptions, ScenePlan / JobPlan (plan_job, prepare_outputs), tile_ranges
    stages.py  no Ray   read_tiles -> Infer -> write_tiles | write_softmax -> blend_tiles -> finish_scene
    job.py     Ray      actor layout (or the model in the driver), the Ray Data graph, the driver loop,
                        metrics, run records

The compute behind the stages lives in Ray-free modules too: :mod:`geoseg.raster`
(reads), :mod:`geoseg.tiling`, :mod:`geoseg.predictor` (the model),
:mod:`geoseg.stitch` and :mod:`geoseg.output` (Zarr, COG, progress log, run record).
"""

from geoseg.predict.job import predict
from geoseg.predict.plan import PredictOptions

__all__ = ["PredictOptions", "predict"]
