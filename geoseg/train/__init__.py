"""``geoseg train``: train a segmentation model on image/label rasters with Ray Train.

Read top to bottom:

    config.py    no Ray   TrainConfig (flags and/or YAML)
    plan.py      no Ray   plan_run -> RunPlan (its RunFolder, bands, split, model), LoopConfig, resume_point
    labels.py    no Ray   the labels' whole scan (class histograms, refusals)
    targets.py   no Ray   label rasters from vectors and field instances
    data.py      no Ray   scene pairs, spatial train/validation split, chips
    cache.py     no Ray   the chip cache: each block decoded once
    augment.py, losses.py
    fit.py       no Ray   Fitter: restore, LR schedule, train epoch, validate, time budget, checkpoint
    pictures.py  no Ray   curves.png, val_quicklook.png
    quantize.py  no Ray   INT8 / bf16 model files of a run, scored on its validation blocks (geoseg quantize)
    job.py       Ray      the label scan and chip cache as Ray tasks, Ray Data chip datasets, TorchTrainer
                          around Fitter, the driver
"""

from geoseg.train.config import TrainConfig
from geoseg.train.job import train

__all__ = ["TrainConfig", "train"]
