"""The paper's own figures (Chhipa et al., ICIP 2023), shown beside ours where a preset reproduces them.

Keys: (dataset, method, backbone); values: metric -> (mean %, std %).
"""

TABLE_II = {
    ("cifar10", "representational"): {"accuracy": (92.20, 0.11), "precision_macro": (92.18, 0.10), "recall_macro": (92.21, 0.10)},
    ("cifar10", "functional"): {"accuracy": (93.60, 0.10), "precision_macro": (93.62, 0.13), "recall_macro": (93.59, 0.11)},
    ("intel-image", "representational"): {"accuracy": (93.18, 0.15), "precision_macro": (93.15, 0.18), "recall_macro": (93.17, 0.20)},
    ("intel-image", "functional"): {"accuracy": (93.70, 0.13), "precision_macro": (93.33, 0.11), "recall_macro": (93.31, 0.11)},
    ("aptos2019", "representational"): {"accuracy": (83.10, 0.10), "precision_macro": (83.05, 0.09), "recall_macro": (83.05, 0.12)},
    ("aptos2019", "functional"): {"accuracy": (83.32, 0.11), "precision_macro": (83.14, 0.10), "recall_macro": (83.04, 0.10)},
}
TABLE_III = {
    ("intel-image", "representational"): {"accuracy": (78.28, 0.14)},
    ("intel-image", "functional"): {"accuracy": (78.52, 0.13)},
}


# The semi-supervised field's CIFAR-10 figures at 4 / 25 / 400 labels a class (WRN-28-2, about 2^20
# steps, so far beyond a matched budget): FixMatch's paper (Sohn et al. 2020, Table 2, mean ± std over
# 5 draws) and the USB benchmark (Wang et al. 2022, 100 - its error, best over training, 3 seeds).
# Keys: (dataset, arm, labels per class); values: the published accuracy %, as the table prints it.
SEMI_SUPERVISED = {
    ("cifar10", "fixmatch", 4): "86.19 ± 3.37 (FixMatch); 91.67 (USB)",
    ("cifar10", "fixmatch", 25): "94.93 ± 0.65 (FixMatch); 95.03 (USB)",
    ("cifar10", "fixmatch", 400): "95.74 ± 0.05 (FixMatch); 95.71 (USB)",
    ("cifar10", "supervised-matched", 4): "22.42 (USB, labels alone)",
    ("cifar10", "supervised-matched", 25): "44.04 (USB, labels alone)",
    ("cifar10", "supervised-matched", 400): "84.49 (USB, labels alone)",
}


def paper_figures(dataset: str, arm: str, backbone: str, labels_per_class: int | None = None
                  ) -> dict[str, tuple[float, float] | str]:
    """Published accuracy for a row: the paper's tables by backbone, or the semi-supervised field's at
    a label budget (any backbone: those are WRN-28-2's, shown as the bar a user compares with)."""
    published = SEMI_SUPERVISED.get((dataset, arm, labels_per_class))
    if published is not None:
        return {"accuracy": published}
    table = {"resnet50": TABLE_II, "resnet18": TABLE_III}.get(backbone, {})
    return table.get((dataset, arm), {})
