"""`fkt cam`: Grad-CAM grids for several checkpoints, grayscale and colour."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fkt.cli import main
from fkt.config import build_config
from fkt.engine import train
from fkt.methods import load_module
from fkt.report.gradcam import cam_maps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A functional and a representational run on a tiny generated colour image folder."""
    from conftest import make_imagefolder

    root = tmp_path_factory.mktemp("cam")
    data = make_imagefolder(root / "data", num_classes=3, train_per_class=8, test_per_class=2)
    runs = {}
    for method in ("functional", "representational"):
        runs[method] = root / method
        train(build_config({
            "method": {"name": method},
            "data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 32, "batch_size": 8,
                     "val_fraction": 0.25, "num_workers": 0},
            "trainer": {"epochs": 1, "pretrain_epochs": 1, "accelerator": "cpu", "progress_bar": False},
            "out": str(runs[method]),
        }))
    return runs


def test_cam_grid_has_a_column_per_checkpoint_plus_the_image(trained, tmp_path):
    checkpoints = [trained["representational"] / "checkpoints" / "pretrain" / "last.ckpt",
                   trained["representational"] / "checkpoints" / "best.ckpt",
                   trained["functional"] / "checkpoints" / "best.ckpt"]
    sizes = {}
    for n_ckpt in (2, 3):
        out = tmp_path / f"grid{n_ckpt}.png"
        args = ["cam", "--images", "4", "--out", str(out)]
        for c in checkpoints[-n_ckpt:]:
            args += ["--checkpoint", str(c)]
        assert main(args) == 0
        with Image.open(out) as img:
            sizes[n_ckpt] = img.size
    (w2, h2), (w3, h3) = sizes[2], sizes[3]
    assert h2 == pytest.approx(h3, rel=0.1)  # four rows either way
    assert w3 / w2 == pytest.approx(4 / 3, rel=0.12)  # image + 3 columns against image + 2
    assert w2 / h2 == pytest.approx((1.9 * 3) / (2.0 * 4), rel=0.25)


def test_cam_maps_are_normalised_heat_maps_on_grayscale_input(trained):
    module = load_module(trained["functional"] / "checkpoints" / "best.ckpt")
    gray = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8).expand(-1, 3, -1, -1)
    maps, preds = cam_maps(module, module.normalize(gray))
    assert maps.shape == (3, 32, 32) and preds.shape == (3,)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    ssl = load_module(trained["representational"] / "checkpoints" / "pretrain" / "last.ckpt")
    maps, preds = cam_maps(ssl, ssl.normalize(gray))
    assert preds is None and maps.shape == (3, 32, 32)


def test_cam_refuses_bad_input(trained, tmp_path, capsys):
    best = str(trained["functional"] / "checkpoints" / "best.ckpt")
    assert main(["cam", "--checkpoint", best, "--dataset", "cifar10", "--out", str(tmp_path / "x.png")]) == 2
    assert "trained on imagefolder" in capsys.readouterr().err
    assert main(["cam", "--checkpoint", best, "--images", "0", "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize("name", ["resnet18", "resnet-tiny"])  # the same strides, so the same layers
def test_cam_layer_keeps_a_spatial_map(name):
    from fkt.models import build_backbone
    from fkt.report.gradcam import cam_layer

    imagenet, _ = build_backbone(name, "imagenet")
    small, _ = build_backbone(name, "small")
    x32 = torch.zeros(1, 3, 32, 32)
    assert cam_layer(imagenet.eval(), x32) is imagenet.layer2  # 8, 4, 2, 1 pixels a side
    assert cam_layer(small.eval(), x32) is small.layer4  # 32, 16, 8, 4
    assert cam_layer(imagenet.eval(), torch.zeros(1, 3, 224, 224)) is imagenet.layer4  # 7x7


@pytest.mark.resnet18
def test_cam_maps_on_resnet18s_layer4():
    """The real backbone once: at 32 px with the small stem, Grad-CAM reads ResNet-18's layer4 (4x4, 512
    channels) of a classifier, untrained here, and gives one normalised map an image."""
    from fkt.methods import Supervised
    from fkt.report.gradcam import cam_layer

    torch.manual_seed(0)
    config = build_config({"data": {"image_size": 32}, "model": {"stem": "small"}})
    module = Supervised(config=config.to_dict(), num_classes=3)
    assert module.cfg.model.backbone == "resnet18"
    images = module.normalize(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert cam_layer(module.backbone.eval(), images) is module.backbone.layer4
    maps, preds = cam_maps(module, images)
    assert maps.shape == (2, 32, 32) and preds.shape == (2,)
    assert maps.min() >= 0 and maps.flatten(1).max(dim=1).values.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
