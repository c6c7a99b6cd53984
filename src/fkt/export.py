"""`fkt export`: a checkpoint's classifier as one file that runs without fkt (TorchScript or ONNX),
and `model.json` saying how to feed it.

The exported model takes raw uint8 RGB images and normalises them itself, with the module's own
`normalize`, so a user cannot get the preprocessing wrong and export cannot drift from evaluation.
Before anything is kept, the file is loaded back from disk and its logits are compared with the
checkpoint's on real test images at two batch sizes (which also proves the batch axis is dynamic).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fkt.data import image_side
from fkt.errors import UserError
from fkt.io import atomic_write, atomic_write_json

FILE_NAMES = {"torchscript": "model.pt", "onnx": "model.onnx"}
# Largest logit difference allowed, relative to the logits' scale (absolute for logits up to 1):
# fp32 rounding grows with the logits, and a barely trained network's reach thousands.
TOLERANCE = 1e-4
CHECK_IMAGES = 64  # real test images the check uses, at most
RANDOM_IMAGES = 16  # seeded random images where the checkpoint's data cannot be loaded
INPUT_NAME, OUTPUT_NAME = "images", "logits"

Runner = Callable[[torch.Tensor], torch.Tensor]


class RawImageClassifier(nn.Module):
    """uint8 RGB (N, 3, S, S) -> float32 logits: the checkpoint's normalisation, backbone and classifier."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.normalize = module.normalize
        self.backbone = module.backbone
        self.classifier = module.classifier
        self.memory_format = module.memory_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize(images).contiguous(memory_format=self.memory_format))
        return self.classifier(features)


def require_onnx() -> None:
    """Fail before any work where the optional ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(f"--format onnx needs {err.name or 'onnx'}: pip install 'fkt[onnx]'") from None


def prepare_out(out: Path) -> Path:
    """The --out folder, created; a user mistake is one line."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: not writable")
    return out


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """A traced module: tracing follows the uint8 input path and keeps channels_last as it runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice, not the user's concern
        traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """torch.export -> ONNX (the dynamo exporter), weights inside the one file, the batch axis dynamic."""
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"images": {0: batch}}, verbose=False)
    return program.model_proto.SerializeToString()


def load_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        model = torch.jit.load(str(path), map_location="cpu")

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(images)

    return run


def load_onnx(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


SERIALIZERS: dict[str, Callable[[nn.Module, torch.Tensor], bytes]] = {"torchscript": torchscript_bytes,
                                                                      "onnx": onnx_bytes}
LOADERS: dict[str, Callable[[Path], Runner]] = {"torchscript": load_torchscript, "onnx": load_onnx}


def check_images(module: nn.Module, checkpoint: Path, data_root: Path | None) -> tuple[torch.Tensor, bool]:
    """The first test images of the checkpoint's data, as evaluation reads them, and True; where that
    data cannot be loaded, seeded random images and False (with a note)."""
    from fkt.evaluate import checkpoint_data

    try:
        test = checkpoint_data(module, checkpoint, data_root).sets["test"]
        why = "it has no test images" if len(test) == 0 else None
    except UserError as err:
        why = f"its data could not be loaded ({err})"
    if why is None:
        return torch.stack([test[i][0] for i in range(min(CHECK_IMAGES, len(test)))]), True
    print(f"[fkt] {checkpoint}: {why}; the export is checked on {RANDOM_IMAGES} random images instead", flush=True)
    size = image_side(module.cfg)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (RANDOM_IMAGES, 3, size, size), dtype=torch.uint8, generator=generator), False


def batched(run: Runner, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([run(chunk) for chunk in images.split(batch_size)])


def self_check(module: nn.Module, run: Runner, images: torch.Tensor, real: bool, path: Path) -> dict[str, Any]:
    """Compare the exported model with the checkpoint, whole batch and small batches; raise if they differ."""
    from fkt.evaluate import predict

    reference, _ = predict(module, [(images, torch.zeros(len(images), dtype=torch.long))])
    sizes = sorted({len(images), max(1, len(images) // 3)}, reverse=True)
    outputs = [batched(run, images, size) for size in sizes]
    for output in outputs:
        if output.dtype != torch.float32 or output.shape != reference.shape:
            raise UserError(f"{path}: the exported model gives {output.dtype} logits of shape {tuple(output.shape)}, "
                            f"expected float32 of shape {tuple(reference.shape)}")
    diff = max((output - reference).abs().max().item() for output in outputs)
    scale = reference.abs().max().item()
    limit = TOLERANCE * max(1.0, scale)
    if not diff <= limit:  # `not` so that a NaN fails too
        raise UserError(f"{path}: the exported model's logits differ from the checkpoint's by {diff:.3g} "
                        f"(allowed {limit:.3g}); nothing was kept")
    return {"images": len(images), "real_test_images": real, "batch_sizes": sizes, "max_abs_logit_diff": diff,
            "max_abs_logit": scale, "tolerance": limit}


def run_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """The test numbers of the checkpoint's run (`<run>/checkpoints/[<stage>/]x.ckpt`), where its
    metrics.json is at hand, and whether they were measured on this very checkpoint."""
    from fkt.rundir import RunDir

    run = RunDir.of(checkpoint)
    if run is None or not run.metrics.is_file():
        return None
    try:
        metrics = json.loads(run.metrics.read_text())
    except (OSError, ValueError):
        return None
    test = metrics.get("test") or {}
    measured_on = metrics.get("checkpoint", run.relative(run.best))
    return {"file": str(run.metrics), "checkpoint": measured_on,
            "this_checkpoint": (run.root / measured_on).resolve() == Path(checkpoint).resolve(),
            "test": {k: v for k, v in test.items() if isinstance(v, (int, float))}}


def describe(module: nn.Module, fmt: str, checkpoint: Path, check: dict[str, Any]) -> dict[str, Any]:
    """model.json: what the model expects and returns, where it came from, and what its check measured."""
    from fkt import __version__
    from fkt.data.transforms import MEAN, STD

    cfg = module.cfg
    size = image_side(module.cfg)
    classes = module.hparams.classes or [str(i) for i in range(module.classifier.out_features)]
    return {
        "format": fmt,
        "file": FILE_NAMES[fmt],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                  "shape": ["batch", 3, size, size], "size": size,
                  "preprocessing": f"resize to {size}x{size} bilinear; normalisation is inside the model"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(classes)],
                   "meaning": "class logits; softmax for probabilities"},
        "mean": list(MEAN),
        "std": list(STD),
        "classes": classes,
        "image_size": size,
        "method": cfg.method.name,
        "arm": cfg.arm or cfg.method.name,
        "module": module.name,
        "classifier_trained": module.trains_classifier,
        "method_config": cfg.method.model_dump(mode="json"),
        "dataset": cfg.data.dataset,
        "backbone": cfg.model.backbone,
        "stem": cfg.model.stem,
        "checkpoint": str(Path(checkpoint).resolve()),
        "run_metrics": run_metrics(checkpoint),
        "fkt_version": __version__,
        "torch_version": torch.__version__,
        "check": check,
    }


def export_checkpoint(checkpoint: Path, fmt: str, out: Path, data_root: Path | None = None,
                      trust: bool = False) -> Path:
    """Write OUT/model.pt or OUT/model.onnx and OUT/model.json; return the model file's path.

    The model file is written under a temporary name and checked from there, so a failed check
    leaves neither a model nor a model.json (nor touches an earlier export in the folder)."""
    from fkt.methods import load_module

    if fmt not in FILE_NAMES:
        raise UserError(f"--format {fmt}: choose from {', '.join(FILE_NAMES)}")
    if fmt == "onnx":
        require_onnx()
    module = load_module(checkpoint, trust)
    out = prepare_out(out)
    if not module.trains_classifier:
        print(f"[fkt] {checkpoint}: an SSL pretraining stage, whose classifier was never trained; exported "
              "anyway (model.json says classifier_trained: false)", flush=True)
    model = RawImageClassifier(module).eval()
    size = image_side(module.cfg)
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = SERIALIZERS[fmt](model, example)
    path, staged = out / FILE_NAMES[fmt], out / f".{FILE_NAMES[fmt]}.unchecked"
    try:
        atomic_write(staged, lambda handle: handle.write(data), mode="wb")
        images, real = check_images(module, checkpoint, data_root)
        check = self_check(module, LOADERS[fmt](staged), images, real, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, path)
    try:
        atomic_write_json(out / "model.json", describe(module, fmt, checkpoint, check))
    except BaseException:  # a model without its description (or with an earlier one) is half an export
        path.unlink(missing_ok=True)
        (out / "model.json").unlink(missing_ok=True)
        raise
    return path
