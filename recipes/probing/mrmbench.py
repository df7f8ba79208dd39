"""MRMBench probes and inference-time probing (ITP): the mathematics, with no I/O.

Paper: C. Wang, Y. Huo et al., "Probing Preference Representations: A Multi-Dimensional Evaluation and Analysis
Method for Reward Models", AAAI 2026 (arXiv 2511.12464). Code: github.com/wangclnlp/MRMBench,
``src/task1_discriminant_rm_deepspeed_cate_2.py`` (Easy) and ``..._cate_3.py`` (Hard).

* Probe (paper Fig. "training and probing RM"; code ``RewardModel_Subtask``): a bias-free linear layer on the frozen
  backbone's representation h (``(n, d)``). Easy: ``nn.Linear(d, 1, bias=False)``, ``BCEWithLogitsLoss``, predict
  ``sigmoid(h w) > 0.5``. Hard: ``nn.Linear(d, 3, bias=False)``, cross-entropy (the paper's ``-log softmax(h W_c)``),
  predict argmax. The code applies the head to every position and then picks the last real token; applying it to the
  cached last-token state is the same number. Training on cached features instead of through the frozen backbone is
  equivalent up to optimizer noise (METHODS.md Part B section 1).
* ITP (METHODS.md: [3P] summary, no code released): per dimension and label, centroids of held-out representations
  (k-means; k=1 is the class mean); for a new sample the distances ``d_i = ||h - c_i||_2`` to every centroid, the
  dimension of the nearest one (what the reward "leans on"), and discard when ``min_i d_i > d_tau`` (d_tau = 140 in
  the paper's PPO experiments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recipes.probing.optim import HeadOptim, fit


class LinearProbe(nn.Module):
    """``h -> logits``: ``nn.Linear(d, 1, bias=False)`` for 2 classes, ``nn.Linear(d, C, bias=False)`` for C > 2.

    The weight is stored as ``(out, d)`` (PyTorch's layout), i.e. the transpose of the paper's ``W`` in ``h W``.
    """

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.linear = nn.Linear(hidden_size, 1 if num_classes == 2 else num_classes, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(n, d) -> (n, 1)`` (2 classes) or ``(n, C)``."""
        return self.linear(h)


def probe_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean BCE-with-logits on ``logits[:, 0]`` (2 classes) or mean cross-entropy (C > 2); ``labels`` ``(n,)``."""
    if num_classes == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return nn.functional.cross_entropy(logits, labels.long())


def probe_predict(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predicted labels ``(n,)``: ``sigmoid(logit) > 0.5`` (i.e. ``logit > 0``) for 2 classes, argmax otherwise."""
    if num_classes == 2:
        return (logits[:, 0] > 0).long()
    return logits.argmax(-1)


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, opt: HeadOptim,
                on_step: Any = None) -> tuple[LinearProbe, list[float]]:
    """Fit a :class:`LinearProbe` on ``features`` ``(n, d)`` and ``labels`` ``(n,)`` with :func:`fit`.

    The probe's initialisation is seeded with ``opt.seed`` (nn.Linear's default init). Returns (probe, step losses).
    """
    with torch.random.fork_rng():
        torch.manual_seed(opt.seed)
        probe = LinearProbe(features.shape[1], num_classes)
    labels = labels.long()
    losses = fit(probe, len(features), lambda idx: probe_loss(probe(features[idx]), labels[idx], num_classes), opt,
                 on_step)
    return probe, losses


@torch.no_grad()
def evaluate_probe(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(accuracy, predictions ``(n,)``) of ``probe`` on ``features`` ``(n, d)``; accuracy is 0.0 on no rows."""
    if len(features) == 0:
        return 0.0, torch.empty(0, dtype=torch.long)
    pred = probe_predict(probe(features), probe.num_classes)
    return float((pred == labels.long()).float().mean()), pred


# --------------------------------------------------------------------------------------------------------------------
# Inference-time probing
# --------------------------------------------------------------------------------------------------------------------


def fit_centroids(features: torch.Tensor, labels: torch.Tensor, num_clusters: int = 1,
                  seed: int = 0) -> dict[int, torch.Tensor]:
    """Centroids of each label's representations: ``{label: (k, d)}``.

    k = 1: the class mean. k > 1: scikit-learn ``KMeans(n_clusters=k, n_init=10, random_state=seed)`` per label.

    Raises:
        ValueError: a label has fewer rows than ``num_clusters``.
    """
    out: dict[int, torch.Tensor] = {}
    for label in sorted(int(x) for x in labels.unique()):
        rows = features[labels == label].double()
        if len(rows) < num_clusters:
            raise ValueError(f"label {label} has {len(rows)} rows, fewer than {num_clusters} clusters")
        if num_clusters == 1:
            out[label] = rows.mean(0, keepdim=True).float()
        else:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit(rows.numpy())
            out[label] = torch.from_numpy(km.cluster_centers_).float()
    return out


@dataclass
class ITPResult:
    """Inference-time probing of m samples against D dimensions with up to L labels each.

    ``distances[i, j, l]`` is the distance from sample i to the nearest centroid of (dimension j, label l), NaN
    where dimension j has no label l; ``nearest_dim``/``nearest_label`` locate the overall nearest centroid;
    ``keep`` is ``min_distance <= d_tau`` (all True when d_tau is None).
    """

    dimensions: list[str]
    distances: torch.Tensor
    min_distance: torch.Tensor
    nearest_dim: torch.Tensor
    nearest_label: torch.Tensor
    keep: torch.Tensor

    @property
    def discard_rate(self) -> float:
        """Share of samples discarded (0.0 for no samples)."""
        return float((~self.keep).float().mean()) if len(self.keep) else 0.0


def inference_time_probe(h: torch.Tensor, centroids: dict[str, dict[int, torch.Tensor]],
                         d_tau: float | None) -> ITPResult:
    """Distances of ``h`` ``(m, d)`` to every (dimension, label) centroid set, the nearest one, and keep/discard.

    Args:
        h: representations of the new samples, from the same backbone and pooling as the centroids.
        centroids: ``{dimension: {label: (k, d)}}`` from :func:`fit_centroids`.
        d_tau: discard a sample when its nearest centroid is farther than this; None keeps every sample.
    """
    dims = list(centroids)
    num_labels = max((max(c) + 1 for c in centroids.values()), default=0)
    dist = torch.full((len(h), len(dims), num_labels), float("nan"))
    for j, dim in enumerate(dims):
        for label, c in centroids[dim].items():
            dist[:, j, label] = torch.cdist(h.double(), c.double()).min(1).values.float()
    flat = torch.nan_to_num(dist, nan=float("inf")).reshape(len(h), -1)
    min_d, arg = flat.min(1) if flat.numel() else (torch.empty(0), torch.empty(0, dtype=torch.long))
    keep = torch.ones(len(h), dtype=torch.bool) if d_tau is None else min_d <= d_tau
    return ITPResult(dims, dist, min_d, arg // max(num_labels, 1), arg % max(num_labels, 1), keep)
