"""``geoseg train``: train a segmentation model on image/label rasters with Ray Train.

Read top to bottom:

    config.py  no Ray   TrainConfig (flags and/or YAML)
    data.py    no Ray   scene pairs, spatial train/validation split, chips
    fit.py     no Ray   Fitter: restore, LR schedule, train epoch, validate, time budget, checkpoint
    job.py     Ray      Ray Data chip datasets, TorchTrainer around Fitter, the driver
"""

from geoseg.train.config import TrainConfig
from geoseg.train.job import train

__all__ = ["TrainConfig", "train"]
