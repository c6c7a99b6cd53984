"""Metrics on a whole split (no dropped batches), of a run's best checkpoint or of any checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional import classification as C

from fkt.data.module import FKTDataModule
from fkt.errors import UserError
from fkt.hardware import evaluation_device
from fkt.io import atomic_write_json
from fkt.methods import load_module
from fkt.rundir import RunDir


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


def representation_metrics(module: Any, data: FKTDataModule, device: torch.device, config: Config,
                           probes: list[str] | None = None, corruptions: bool | None = None) -> dict[str, Any]:
    """Beyond clean test metrics: probes of the frozen backbone (k-NN, linear) and the test accuracy
    under common corruptions, as `config.evaluate` says unless `probes` or `corruptions` say otherwise."""
    settings = config.evaluate
    probes = settings.probes if probes is None else probes
    results: dict[str, Any] = {}
    if probes:
        from fkt.probes import probe_accuracies

        results["probes"] = probe_accuracies(module, data, list(probes), device)
    if settings.corruptions if corruptions is None else corruptions:
        from fkt.corruptions import corruption_accuracy

        loader = data.loader("test", limit=settings.corruption_images)
        results["corruptions"] = corruption_accuracy(module, loader, device, settings.corruption_seed)
        results["corruptions"]["images"] = len(loader.dataset)
    return results


def skipped_images(bundle: Any) -> dict[str, Any]:
    """The unreadable image files a run or an evaluation left out (`--skip-bad-images`), as its JSON says them."""
    skipped = getattr(bundle, "skipped", [])
    return {"count": len(skipped), "files": [f"{path}: {why}" for path, why in skipped]}


def checkpoint_data(module: Any, checkpoint: Path, data_root: Path | None = None,
                    skip_bad_images: bool = False) -> FKTDataModule:
    """The data a checkpoint was trained on, with its run's saved split where the run directory
    is at hand, else the same split made again. `skip_bad_images`: files that became unreadable
    since are left out (and counted), as `fkt train --skip-bad-images` does."""
    config = module.cfg.model_copy(deep=True)
    if data_root is not None:
        config.data.root = data_root
    if skip_bad_images:
        config.data.skip_bad_images = True
    run = RunDir.of(checkpoint)
    data = FKTDataModule(config, split_file=run.split if run is not None and run.split.is_file() else None)
    data.setup()
    return data


def evaluate_checkpoint(checkpoint: Path, dataset: str | None, data_root: Path | None, out: Path | None,
                        probes: list[str] = (), corruptions: bool = False, trust: bool = False,
                        skip_bad_images: bool = False) -> dict[str, Any]:
    """Test metrics of a saved checkpoint, on the same split its run used where that is known; with
    `probes` and `corruptions`, the representation and robustness measures as well. An SSL pretraining stage
    has no trained classifier: it gets the k-NN probe instead of test metrics."""
    module = load_module(checkpoint, trust)
    if dataset is not None and dataset != module.cfg.data.dataset:
        raise UserError(f"--dataset {dataset}: the checkpoint was trained on {module.cfg.data.dataset}")
    data = checkpoint_data(module, checkpoint, data_root, skip_bad_images)
    if data.classes != module.hparams.classes and module.hparams.classes is not None:
        raise UserError(f"--checkpoint {checkpoint}: its classes differ from the dataset's")
    device = evaluation_device(module.cfg)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": module.cfg.data.dataset,
                               "module": module.name}
    if not module.trains_classifier:
        print(f"[fkt] {checkpoint}: an SSL pretraining stage, whose classifier was never trained: "
              "no test metrics or corruption accuracy; its backbone is probed instead", flush=True)
        probes = list(probes) or ["knn"]
    else:
        logits, targets = predict(module, data.loader("test"), device)
        results["test"] = classification_metrics(logits, targets, data.classes, ordinal=data.bundle.ordinal)
    results.update(representation_metrics(module, data, device, module.cfg, list(probes),
                                          corruptions and module.trains_classifier))
    if getattr(data.bundle, "skipped", []):
        results["skipped_images"] = skipped_images(data.bundle)
    if out is not None:
        atomic_write_json(Path(out) / "eval.json", results)
    return results
