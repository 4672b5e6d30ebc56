"""``geoseg predict``: segment rasters tile by tile, stitched into Zarr and COG outputs.

Read top to bottom:

    options.py  no Ray   PredictOptions: what the user asked, checked
    plan.py     no Ray   plan_job -> JobPlan (the JobContext every stage takes, the scenes), plan_scene
    stages.py   no Ray   plan_scenes -> read_tiles -> Infer -> write_tiles | write_softmax
    finish.py   no Ray   blend_tiles (hann) -> finish_scene (COG) -> complete_scene (STAC item, record)
    layout.py   no Ray   where the model runs (ActorLayout), at which runtime and precision
    driver.py   no Ray   the driver loop every runner shares: SceneTracker, DriverModel, drive
    local.py    no Ray   LocalRunner: a job of one scene in this process alone
    job.py      Ray      RayRunner: the Ray Data pipeline and Ray tasks; predict(), which picks a runner

The compute behind the stages lives in the layers below: :mod:`geoseg.data` (reads, tiles,
stitching, Zarr / COG / run records) and :mod:`geoseg.models` (the model).
"""

from geoseg.predict.job import predict
from geoseg.predict.options import PredictOptions

__all__ = ["PredictOptions", "predict"]
