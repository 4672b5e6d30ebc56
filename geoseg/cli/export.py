"""geoseg export: a trained model as one self-describing file."""

from __future__ import annotations

from geoseg.data import storage
from geoseg.cli.args import command


def add(sub) -> None:
    e = command(sub, "export", "a trained model as one self-describing file (ONNX, TorchScript or torch.export)",
            "geoseg export runs/unet --format onnx")
    e.add_argument("run_dir", help="training run folder or checkpoint")
    e.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "pt2"),
                   help="onnx (ONNX Runtime), torchscript (.pt) or pt2 (torch.export)")
    e.add_argument("--out", help="model file (default RUN_DIR/model.onnx, model.pt or model.pt2)")
    e.set_defaults(run=run)


def run(a) -> None:
    from geoseg.models.export import FORMATS, export

    export(a.run_dir, a.format, a.out or storage.join(a.run_dir, f"model{FORMATS[a.format]}"))
