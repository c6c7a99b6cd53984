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


def paper_figures(dataset: str, arm: str, backbone: str) -> dict[str, tuple[float, float]]:
    table = {"resnet50": TABLE_II, "resnet18": TABLE_III}.get(backbone, {})
    return table.get((dataset, arm), {})
