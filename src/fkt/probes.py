"""How good a checkpoint's representation is, whatever its classifier: probes of the frozen backbone.

The paper calls the two-stage route "representational"; these measure the representation every arm
learns (the SimCLR stage included, which has no trained classifier), with the SSL literature's two
standard protocols on features of the training split (no augmentation) and the test split:
- k-NN: lightly's `knn_predict` (the weighted k-NN monitor of Wu et al. 2018, as in MoCo, DINO and
  solo-learn): cosine similarity, the k nearest training features, votes weighted exp(sim / T).
- linear: logistic regression on standardised features (scikit-learn): the linear-evaluation
  protocol, solved exactly and deterministically, so there is no training loop to tune.
"""

from __future__ import annotations

import torch
from lightly.utils.benchmarking import knn_predict
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

PROBES = ("knn", "linear")


@torch.no_grad()
def backbone_features(module, loader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen backbone features (float32, CPU) and labels of every image the loader yields, in order."""
    module = module.to(device).eval()
    features, labels = [], []
    for images, targets in loader:
        features.append(module.features(module.normalize(images.to(device))).float().cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Weighted k-NN accuracy (k=20, T=0.07 as in InstDisc/DINO), chunked over the test set."""
    bank = F.normalize(train_x.float(), dim=1).t().contiguous()
    queries = F.normalize(test_x.float(), dim=1)
    k = min(k, bank.shape[1])
    correct = 0
    for start in range(0, len(queries), chunk):
        ranked = knn_predict(queries[start:start + chunk], bank, train_y, num_classes, knn_k=k, knn_t=temperature)
        correct += int((ranked[:, 0] == test_y[start:start + chunk]).sum())
    return correct / len(test_y)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, seed: int = 0) -> float:
    """Logistic regression (lbfgs, L2, standardised features) on the training features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(train_x.numpy(), train_y.numpy())
    return float((probe.predict(test_x.numpy()) == test_y.numpy()).mean())


def probe_accuracies(module, data, kinds: list[str], device: torch.device | str = "cpu") -> dict[str, float]:
    """Test accuracy of each probe in `kinds`, from one extraction of the train and test features."""
    unknown = sorted(set(kinds) - set(PROBES))
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; choose from {PROBES}")
    if not kinds:
        return {}
    train_x, train_y = backbone_features(module, data.loader("train"), device)
    test_x, test_y = backbone_features(module, data.loader("test"), device)
    results = {}
    if "knn" in kinds:
        results["knn"] = knn_accuracy(train_x, train_y, test_x, test_y, len(data.classes))
    if "linear" in kinds:
        results["linear"] = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    return results
