"""FixMatch's strong augmentation (Sohn et al. 2020) of each image in a batch, on its device.

WeakView's flip and shift (FixMatch and USB apply RandAugment after the weak transform), then
RandAugment with random magnitudes, then Cutout. Pool, ranges and Cutout are USB's
(microsoft/Semi-supervised-learning, semilearn/datasets/augmentation/randaugment.py: `augment_list`,
`RandAugment.__call__`, `Cutout`/`CutoutAbs`), whose ops are PIL's: `n_ops` ops drawn uniformly with
replacement, each with a magnitude uniform in its `POOL` range (Brightness, Color, Contrast, Sharpness:
PIL's enhance factor 0.05-0.95; Posterize: int(U(4, 8)), so 4-7 bits; Rotate: -30..30 degrees
counter-clockwise about the centre; ShearX/Y: -0.3..0.3 about the top-left corner; Solarize: threshold
0-256 on the 0-255 scale; TranslateX/Y: -0.3..0.3 of the side), then a Cutout square of side
U(0, 0.5) * width at a uniform centre, clipped by the image, filled with RGB (125, 123, 114).
Geometric ops take the nearest pixel and fill with black, as PIL's do; the tests check every op against
USB's PIL call. `n_ops` defaults to FixMatch's 2 (google-research/fixmatch, libml/augment.py:
RAND_AUGMENT_CUTOUT, nops=2; USB's CIFAR recipe uses 3); FixMatch applies each op with probability 1/2,
USB, followed here, always.

Every draw takes the caller's generator, per image; each op runs once per slot on the images that drew
it (one host sync a call, for the group sizes), so no op is computed for images it leaves alone.
"""

from __future__ import annotations

import kornia.enhance as KE
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.nn import functional as F

from fkt.data.transforms import Normalize, WeakView, to_float

POOL = {  # op: magnitude range (USB's augment_list)
    "AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
    "Equalize": (0, 1), "Identity": (0, 1), "Posterize": (4, 8), "Rotate": (-30, 30), "Sharpness": (0.05, 0.95),
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256), "TranslateX": (-0.3, 0.3),
    "TranslateY": (-0.3, 0.3),
}
COLOUR = {  # [0, 1] batch, magnitude per image -> batch; PIL's definitions
    "AutoContrast": lambda x, v: TF.autocontrast(x),
    "Brightness": KE.adjust_brightness_accumulative,  # multiplies
    "Color": KE.adjust_saturation_with_gray_subtraction,
    "Contrast": KE.adjust_contrast_with_mean_subtraction,
    "Equalize": lambda x, v: KE.equalize(x),
    "Identity": lambda x, v: x,
    "Posterize": lambda x, v: KE.posterize(x, v.long()),
    "Sharpness": KE.sharpness,
    "Solarize": lambda x, v: KE.solarize(x, v / 255),
}
CUTOUT_FILL = (125, 123, 114)


def pil_affine(name: str, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """USB's PIL output -> input map (a, b, c, d, e, f) of a geometric op, pixels from the top-left corner."""
    v = v.float()
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "Rotate":  # Image.rotate
        cos, sin, cx, cy = torch.deg2rad(v).cos(), torch.deg2rad(v).sin(), width / 2, height / 2
        rows = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    else:
        rows = {"ShearX": [one, v, zero, zero, one, zero], "ShearY": [one, zero, zero, v, one, zero],
                "TranslateX": [one, zero, v * width, zero, one, zero],
                "TranslateY": [one, zero, zero, zero, one, v * height]}[name]
    return torch.stack(rows + [zero, zero, one], 1).view(-1, 3, 3)


def warp(x: torch.Tensor, pil_map: torch.Tensor) -> torch.Tensor:
    """Resample each image by its PIL map: nearest pixel, black outside."""
    _, _, h, w = x.shape
    to_unit = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], device=x.device)
    from_unit = torch.tensor([[w / 2, 0, w / 2], [0, h / 2, h / 2], [0, 0, 1]], device=x.device)
    grid = F.affine_grid((to_unit @ pil_map @ from_unit)[:, :2], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class StrongView(nn.Module):
    """FixMatch's strong view of each image in a batch (see the module's docstring), normalised."""

    def __init__(self, n_ops: int = 2, ops: tuple[str, ...] = tuple(POOL), cutout: float = 0.5,
                 weak: bool = True, shift: float = 0.125) -> None:
        super().__init__()
        if set(ops) - set(POOL):
            raise ValueError(f"unknown ops {sorted(set(ops) - set(POOL))}; the pool is {list(POOL)}")
        self.n_ops, self.ops, self.cutout_max = n_ops, tuple(ops), cutout
        self.weak_view = WeakView(shift) if weak else None
        self.register_buffer("fill", torch.tensor(CUTOUT_FILL).view(1, 3, 1, 1) / 255, persistent=False)
        self.normalize = Normalize()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g, x = generator, to_float(images)
        x = self.weak_view.flip_shift(x, g) if self.weak_view is not None else x.clone()
        n, dev = x.shape[0], x.device
        choice = torch.randint(len(self.ops), (self.n_ops, n), device=dev, generator=g)
        u = torch.rand(self.n_ops, n, device=dev, generator=g)
        counts = (choice[..., None] == torch.arange(len(self.ops), device=dev)).sum(1).tolist()  # the host sync
        for slot in range(self.n_ops):  # an image has one op a slot, so their order within it is moot
            warped, maps = [], []
            for name, idx in zip(self.ops, choice[slot].argsort(stable=True).split(counts[slot])):
                if len(idx) and name != "Identity":
                    lo, hi = POOL[name]
                    v = lo + (hi - lo) * u[slot, idx]
                    if name in COLOUR:
                        x[idx] = COLOUR[name](x[idx], v)
                    else:
                        warped.append(idx)
                        maps.append(pil_affine(name, v, *x.shape[2:]))
            if warped:  # the slot's geometric ops in one resampling
                idx = torch.cat(warped)
                x[idx] = warp(x[idx], torch.cat(maps))
        return self.normalize(self.cutout(x, g))

    @staticmethod
    def apply(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One pool op on a [0, 1] batch, with magnitude v[i] (in the op's POOL range) for image i."""
        return COLOUR[name](x, v) if name in COLOUR else warp(x, pil_affine(name, v, *x.shape[2:]))

    def cutout(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """USB's Cutout: columns left..left + side, both included as in PIL's rectangle; rows alike."""
        n, _, h, w = x.shape
        dev = x.device
        side = torch.rand(n, 1, device=dev, generator=g) * self.cutout_max * w
        centre = torch.rand(n, 2, device=dev, generator=g) * torch.tensor([w, h], device=dev)
        left, top = (centre - side / 2).clamp(min=0).floor().unbind(1)
        cols, rows = torch.arange(w, device=dev), torch.arange(h, device=dev)
        in_x = (cols >= left[:, None]) & (cols <= left[:, None] + side) & (side > 0)  # USB: no cut at 0
        in_y = (rows >= top[:, None]) & (rows <= top[:, None] + side)
        return torch.where((in_y[:, :, None] & in_x[:, None, :])[:, None], self.fill, x)
