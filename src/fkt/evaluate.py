"""Metrics on a whole split (no dropped batches), and loading any fkt checkpoint to get them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional import classification as C

from fkt.errors import UserError


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets for every image the loader yields (uint8 images, normalised here)."""
    model = model.to(device).eval()
    logits, targets = [], []
    for images, labels in loader:
        logits.append(model(model.normalize(images.to(device))).float().cpu())
        targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                           ordinal: bool = False) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, calibration (ECE, NLL), per-class report, confusion
    matrix; QWK where ordinal."""
    n = len(classes)
    preds = logits.argmax(dim=1)
    args = dict(num_classes=n, validate_args=False)
    per_class = {
        "precision": C.multiclass_precision(preds, targets, average="none", **args),
        "recall": C.multiclass_recall(preds, targets, average="none", **args),
        "f1": C.multiclass_f1_score(preds, targets, average="none", **args),
    }
    support = torch.bincount(targets, minlength=n)
    metrics: dict[str, Any] = {
        "accuracy": C.multiclass_accuracy(preds, targets, average="micro", **args).item(),
        "precision_macro": C.multiclass_precision(preds, targets, average="macro", **args).item(),
        "recall_macro": C.multiclass_recall(preds, targets, average="macro", **args).item(),
        "f1_macro": C.multiclass_f1_score(preds, targets, average="macro", **args).item(),
        "n": int(len(targets)),
    }
    # Calibration: expected calibration error over 15 confidence bins (Guo et al. 2017), and the NLL.
    metrics["ece"] = C.multiclass_calibration_error(logits.softmax(dim=1), targets, n_bins=15, norm="l1",
                                                    **args).item()
    metrics["nll"] = torch.nn.functional.cross_entropy(logits, targets).item()
    if ordinal:
        metrics["qwk"] = C.multiclass_cohen_kappa(preds, targets, weights="quadratic", **args).item()
    metrics["per_class"] = {
        name: {**{k: v[i].item() for k, v in per_class.items()}, "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    metrics["confusion_matrix"] = C.multiclass_confusion_matrix(preds, targets, **args).tolist()
    return metrics


def load_checkpoint(path: Path, trust: bool = False):
    """Any fkt checkpoint -> its method module, on the CPU, in eval mode (read as data unless `trust`)."""
    from fkt.checkpointing import read_checkpoint
    from fkt.methods import MODULES

    path = Path(path)
    checkpoint = read_checkpoint(path, trust)
    info = checkpoint.get("fkt")
    name = info.get("module") if isinstance(info, dict) else None
    if name not in MODULES:
        raise UserError(f"--checkpoint {path}: not an fkt checkpoint")
    hparams = checkpoint["hyper_parameters"]
    config = dict(hparams["config"])
    config["model"] = {**config["model"], "pretrained_weights": None}  # the weights are in the checkpoint
    module = MODULES[name](config=config, num_classes=hparams["num_classes"], classes=hparams.get("classes"),
                           freeze_backbone=hparams.get("freeze_backbone", False))
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.eval()
