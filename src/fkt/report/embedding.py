"""t-SNE of backbone features on (a seeded subset of) the test set, coloured by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.manifold import TSNE

from fkt.report.figures import plt, save


@torch.no_grad()
def backbone_features(module, dataset, indices: np.ndarray, batch: int = 256) -> np.ndarray:
    module = module.eval()
    feats = []
    for start in range(0, len(indices), batch):
        images = torch.stack([dataset[int(i)][0] for i in indices[start:start + batch]])
        feats.append(module.features(module.normalize(images)).float())
    return torch.cat(feats).numpy()


def embedding_plot(module, dataset, classes: list[str], path: Path, title: str, limit: int = 800,
                   seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.permutation(len(dataset))[:limit])
    points = TSNE(n_components=2, init="pca", perplexity=min(30, max(2, len(indices) // 4)),
                  random_state=seed).fit_transform(backbone_features(module, dataset, indices))
    labels = np.asarray(dataset.images.targets)[indices]
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for label in np.unique(labels):
        mask = labels == label
        ax.scatter(points[mask, 0], points[mask, 1], s=4, label=classes[label], alpha=0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(markerscale=3, fontsize=6, loc="best")
    save(fig, Path(path))
    return Path(path)
