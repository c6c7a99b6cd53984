"""fkt.evaluate.classification_metrics cross-checked against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from fkt.evaluate import classification_metrics


def logits_for(preds: np.ndarray, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Random logits whose argmax is `preds` (ties impossible: the winner gets +10)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(preds), num_classes))
    logits[np.arange(len(preds)), preds] += 10.0
    return torch.tensor(logits, dtype=torch.float32)


def sklearn_report(targets: np.ndarray, preds: np.ndarray, num_classes: int, zero_division=0):
    labels = list(range(num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macro = skm.precision_recall_fscore_support(targets, preds, labels=labels, average="macro",
                                                    zero_division=zero_division)
        per = skm.precision_recall_fscore_support(targets, preds, labels=labels, average=None,
                                                  zero_division=zero_division)
    return macro, per


def check_against_sklearn(metrics: dict, targets: np.ndarray, preds: np.ndarray, classes: list[str],
                          zero_division=0) -> None:
    n = len(classes)
    assert metrics["n"] == len(targets)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(targets, preds), abs=1e-6)
    macro, (precision, recall, f1, support) = sklearn_report(targets, preds, n, zero_division)
    assert metrics["precision_macro"] == pytest.approx(macro[0], abs=1e-6)
    assert metrics["recall_macro"] == pytest.approx(macro[1], abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(macro[2], abs=1e-6)
    assert list(metrics["per_class"]) == classes  # keyed by name, in class order
    for i, name in enumerate(classes):
        row = metrics["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6), name
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6), name
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6), name
        assert row["support"] == support[i] and isinstance(row["support"], int)
    # rows = true class, columns = predicted class, as in scikit-learn
    assert metrics["confusion_matrix"] == skm.confusion_matrix(targets, preds, labels=list(range(n))).tolist()


@pytest.mark.parametrize("num_classes,n,seed", [(2, 40, 0), (5, 200, 1), (10, 300, 2)])
def test_metrics_match_sklearn_when_every_class_occurs(num_classes, n, seed):
    rng = np.random.default_rng(seed)
    targets = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    # predictions: right 60% of the time, else random; every class predicted at least once
    preds = np.where(rng.random(n) < 0.6, targets, rng.integers(0, num_classes, n))
    preds[:num_classes] = np.roll(np.arange(num_classes), 1)
    assert set(targets) == set(preds) == set(range(num_classes))
    classes = [f"c{i}" for i in range(num_classes)]
    metrics = classification_metrics(logits_for(preds, num_classes, seed), torch.tensor(targets), classes,
                                     ordinal=True)
    check_against_sklearn(metrics, targets, preds, classes)
    assert metrics["qwk"] == pytest.approx(skm.cohen_kappa_score(targets, preds, weights="quadratic"), abs=1e-5)
    assert 0 < metrics["accuracy"] < 1
    assert sum(map(sum, metrics["confusion_matrix"])) == n


def test_class_never_predicted_matches_zero_division_0():
    """Class 3 is never predicted: its precision is 0/0. fkt reports 0 for it and counts that 0 in the
    macro average, which is scikit-learn's zero_division=0 (its default "warn" behaves the same);
    zero_division=1 and zero_division=nan give different macro precisions."""
    targets = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    preds = np.array([0, 1, 1, 1, 0, 2, 0, 0, 0, 2])
    classes = ["a", "b", "c", "d"]
    metrics = classification_metrics(logits_for(preds, 4), torch.tensor(targets), classes, ordinal=True)
    check_against_sklearn(metrics, targets, preds, classes, zero_division=0)
    assert metrics["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    for other in (1, np.nan):
        macro, _ = sklearn_report(targets, preds, 4, zero_division=other)
        assert metrics["precision_macro"] != pytest.approx(macro[0], abs=1e-3)
    assert metrics["qwk"] == pytest.approx(skm.cohen_kappa_score(targets, preds, weights="quadratic"), abs=1e-5)


def test_class_absent_from_targets_and_predictions():
    """Class 'd' neither occurs nor is predicted (a small split can miss a class). Current convention
    (torchmetrics): it is left out of the macro averages, like scikit-learn with zero_division=nan
    (or labels limited to those present), while its per-class row reports 0.0 with support 0."""
    targets = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    classes = ["a", "b", "c", "d"]
    metrics = classification_metrics(logits_for(preds, 4), torch.tensor(targets), classes)
    macro_nan, _ = sklearn_report(targets, preds, 4, zero_division=np.nan)
    assert metrics["precision_macro"] == pytest.approx(macro_nan[0], abs=1e-6)
    assert metrics["recall_macro"] == pytest.approx(macro_nan[1], abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(macro_nan[2], abs=1e-6)
    assert metrics["per_class"]["d"]["support"] == 0
    assert metrics["confusion_matrix"][3] == [0, 0, 0, 0] and [row[3] for row in metrics["confusion_matrix"]] == [0] * 4


def test_qwk_only_when_ordinal_and_known_values():
    targets = torch.tensor([0, 1, 2, 3, 4])
    perfect = classification_metrics(logits_for(targets.numpy(), 5), targets, list("abcde"), ordinal=True)
    assert perfect["qwk"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0 and perfect["f1_macro"] == 1.0
    assert perfect["confusion_matrix"] == np.eye(5, dtype=int).tolist()
    reversed_ = classification_metrics(logits_for(4 - targets.numpy(), 5), targets, list("abcde"), ordinal=True)
    assert reversed_["qwk"] == pytest.approx(-1.0)
    constant = classification_metrics(logits_for(np.zeros(5, dtype=int), 5), targets, list("abcde"), ordinal=True)
    assert constant["qwk"] == pytest.approx(0.0)
    assert "qwk" not in classification_metrics(logits_for(targets.numpy(), 5), targets, list("abcde"))


def test_qwk_penalises_distance_unlike_accuracy():
    """Same accuracy, but off-by-one errors score a higher QWK than off-by-four errors."""
    targets = np.array([0, 1, 2, 3, 4] * 4)
    near, far = targets.copy(), targets.copy()
    near[[0, 5]] = 1
    far[[0, 5]] = 4
    m_near = classification_metrics(logits_for(near, 5), torch.tensor(targets), list("abcde"), ordinal=True)
    m_far = classification_metrics(logits_for(far, 5), torch.tensor(targets), list("abcde"), ordinal=True)
    assert m_near["accuracy"] == m_far["accuracy"]
    assert m_near["qwk"] > m_far["qwk"]
    for m, p in ((m_near, near), (m_far, far)):
        assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(targets, p, weights="quadratic"), abs=1e-5)


def test_metrics_are_plain_python_values():
    targets = torch.tensor([0, 1, 1, 0])
    metrics = classification_metrics(logits_for(np.array([0, 1, 0, 0]), 2), targets, ["x", "y"], ordinal=True)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "qwk"):
        assert type(metrics[key]) is float, key
    assert type(metrics["n"]) is int
    assert all(type(v) is int for row in metrics["confusion_matrix"] for v in row)
