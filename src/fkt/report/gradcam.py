"""Grad-CAM grids: the same test images through several checkpoints, side by side.

Grad-CAM (captum's LayerGradCam) explains the predicted class of a classifier from the
deepest ResNet stage whose maps are still at least 4x4 (at 32 px with the ImageNet stem the
last stage is 1x1, where a "map" is one number). An SSL-pretrained checkpoint has no trained classifier, so for it the map
explains the norm of its projection instead: what its features respond to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from fkt.data.transforms import denormalize
from fkt.report.figures import plt, save


class _ProjectionNorm(nn.Module):
    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.ssl.projector(self.module.features(images)).norm(dim=1, keepdim=True)


def cam_layer(backbone: nn.Module, images: torch.Tensor, min_side: int = 4) -> nn.Module:
    """The deepest of layer4..layer1 whose output keeps at least `min_side` pixels a side."""
    sizes = {}
    hooks = [getattr(backbone, name).register_forward_hook(
        lambda m, i, out, name=name: sizes.__setitem__(name, min(out.shape[-2:])))
        for name in ("layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        backbone(images[:1])
    for hook in hooks:
        hook.remove()
    for name in ("layer4", "layer3", "layer2", "layer1"):
        if sizes[name] >= min_side:
            return getattr(backbone, name)
    return backbone.layer1


def cam_maps(module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Heat maps in [0, 1] at the image size, and the predicted classes (None for SSL pretraining)."""
    module = module.eval()
    ssl_only = not module.trains_classifier
    model = _ProjectionNorm(module) if ssl_only else module
    with torch.no_grad():
        preds = None if ssl_only else module(images).argmax(dim=1)
    target = torch.zeros(len(images), dtype=torch.long) if ssl_only else preds
    layer = cam_layer(module.backbone, images.contiguous(memory_format=module.memory_format))
    attr = LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(attr, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).detach(), preds


def cam_grid(modules: list, names: list[str], images: torch.Tensor, targets: torch.Tensor,
             classes: list[str], path: Path) -> None:
    """Rows: images. Columns: the image itself, then one Grad-CAM overlay per checkpoint."""
    shown = denormalize(images).permute(0, 2, 3, 1).numpy()
    columns = [cam_maps(m, images) for m in modules]
    rows, cols = len(images), 1 + len(modules)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(shown[r])
        axes[r, 0].set_title(f"true: {classes[targets[r]]}", fontsize=7)
        for c, ((maps, preds), name) in enumerate(zip(columns, names), start=1):
            axes[r, c].imshow(shown[r])
            axes[r, c].imshow(maps[r].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            label = "SSL features" if preds is None else f"pred: {classes[preds[r]]}"
            ok = preds is None or preds[r] == targets[r]
            axes[r, c].set_title(f"{name}\n{label}", fontsize=7, color="black" if ok else "red")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    save(fig, path)


def pick_images(dataset, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` test images, one class after another where there are enough classes, seeded."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.images.targets)
    order = []
    for label in rng.permutation(np.unique(targets)):
        order.append(int(rng.choice(np.flatnonzero(targets == label))))
    rest = [i for i in rng.permutation(len(targets)) if i not in set(order)]
    chosen = (order + rest)[:count]
    images, labels = zip(*(dataset[i] for i in chosen))
    return torch.stack(images), torch.tensor(labels)


def column_name(module) -> str:
    return "SSL-pretrained" if not module.trains_classifier else (module.cfg.arm or module.cfg.method.name)


def load_columns(checkpoints: list[Path], dataset: str | None, data_root: Path | None, trust: bool = False,
                 skip_bad_images: bool = False):
    """The checkpoints' modules and the test data they share (checked: same dataset and size)."""
    from fkt.data import image_side
    from fkt.errors import UserError
    from fkt.evaluate import checkpoint_data
    from fkt.methods import load_module

    modules = [load_module(c, trust) for c in checkpoints]
    size = image_side(modules[0].cfg)
    for checkpoint, module in zip(checkpoints, modules):
        if dataset is not None and module.cfg.data.dataset != dataset:
            raise UserError(f"--checkpoint {checkpoint}: trained on {module.cfg.data.dataset}, not {dataset}")
        if image_side(module.cfg) != size:
            raise UserError(f"--checkpoint {checkpoint}: image size {image_side(module.cfg)} differs from "
                            f"{size} of the first checkpoint")
    return modules, checkpoint_data(modules[0], checkpoints[0], data_root, skip_bad_images)


def cam_from_checkpoints(checkpoints: list[Path], dataset: str | None, data_root: Path | None,
                         count: int, path: Path, loaded=None, trust: bool = False,
                         skip_bad_images: bool = False) -> Path:
    """`fkt cam`: a grid of the same `count` test images through every checkpoint."""
    from fkt.errors import UserError

    if count < 1:
        raise UserError(f"--images {count}: must be at least 1")
    modules, data = loaded or load_columns(checkpoints, dataset, data_root, trust, skip_bad_images)
    images, targets = pick_images(data.sets["test"], count)
    cam_grid(modules, [column_name(m) for m in modules], modules[0].normalize(images), targets, data.classes,
             Path(path))
    return Path(path)
