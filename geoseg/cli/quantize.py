"""geoseg quantize: an INT8 or bf16 model file, scored against fp32."""

from __future__ import annotations

from geoseg.cli.args import command, positive


def add(sub) -> None:
    q = command(sub, "quantize", "an INT8 (or bf16) model file, scored against fp32 on the run's validation "
                                        "blocks",
            "geoseg quantize runs/unet --precision int8 --max-miou-drop 0.01")
    q.add_argument("run_dir", help="training run folder (its run.json names the rasters and the split)")
    q.add_argument("--precision", default="int8", choices=("int8", "bf16"), help="default int8 (ONNX Runtime)")
    q.add_argument("--calibration", nargs="+", metavar="IMG",
                   help="rasters to calibrate activation ranges on (default: training chips of the run)")
    q.add_argument("--calibration-chips", type=positive("--calibration-chips"), default=64,
                   help="calibration inputs (default 64)")
    q.add_argument("--max-miou-drop", type=float, default=0.01,
                   help="refuse the model when its validation mIoU is lower than fp32's by more (default 0.01)")
    q.add_argument("--out", help="model file (default RUN_DIR/model.int8.onnx or model.bf16.pt)")
    q.set_defaults(run=run)


def run(a) -> None:
    from geoseg.train.quantize import quantize

    quantize(a.run_dir, a.precision, a.calibration, a.max_miou_drop, a.out, a.calibration_chips)
