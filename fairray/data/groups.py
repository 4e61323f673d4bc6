"""Group sources: which groups a debiasing method trains with (METHODS §1.3, §3.3).

A group source turns the prepared dataset into training-group ids (``-1`` = unknown) and soft
memberships. Inferred groups are for training only: every fairness metric keeps using the true
attribute. Registered sources:

- ``attribute`` — the true protected attribute (IDI ●), one-hot memberships;
- ``kmeans`` — k-means clusters of speaker embeddings (IDI ○), fitted on the train split;
- ``pseudo`` — pseudo-labels of the attribute from a classifier trained on the *other* corpora of the
  dataset (IDI ◐ offline; the paper used a pretrained age-gender model, not available offline here); its
  accuracy against the true attribute on each target corpus is reported in ``Groups.info``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fairray._registry import Registry
from fairray.errors import ConfigError, DataError


@dataclass(frozen=True)
class GroupInput:
    """What a group source may read: the prepared table, true attribute codes, the split, extra arrays."""

    meta: pd.DataFrame
    attr: np.ndarray
    attr_values: tuple[str, ...]
    split: np.ndarray
    aux: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Groups:
    ids: np.ndarray  # int64 [N], -1 unknown
    values: tuple[str, ...]  # names of the ids
    prob: np.ndarray  # float32 [N, G], rows sum to 1 (0 for unknown)
    info: dict[str, float] = field(default_factory=dict)  # diagnostics logged with every trial


#: name -> fn(GroupInput, params) -> Groups
GROUP_SOURCES: Registry[Callable[[GroupInput, Mapping[str, Any]], Groups]] = Registry("group source")

#: Auxiliary arrays a loader must provide with the dataset → the extractor that computes them per clip.
AUX_EXTRACTORS = {"speaker_emb": "resemblyzer"}


def needs(name: str) -> tuple[str, ...]:
    """The auxiliary arrays (keys of :data:`AUX_EXTRACTORS`) group source ``name`` reads."""
    return getattr(GROUP_SOURCES.get(name), "needs", ())


def one_hot(ids: np.ndarray, n: int) -> np.ndarray:
    prob = np.zeros((len(ids), n), dtype=np.float32)
    known = ids >= 0
    prob[np.flatnonzero(known), ids[known]] = 1.0
    return prob


def _params(name: str, params: Mapping[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"group source {name!r}: unknown parameter(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **params}


def _embeddings(inp: GroupInput, name: str) -> np.ndarray:
    if "speaker_emb" not in inp.aux:
        raise DataError(f"group source {name!r} needs speaker embeddings; this dataset has none "
                        "(the built-in ser3 ships them; rebuild it with `fairray data build-builtin`)")
    return np.asarray(inp.aux["speaker_emb"], dtype=np.float64)


@GROUP_SOURCES.register("attribute")
def attribute(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """The true protected attribute (``dataset.attribute``) as training groups."""
    _params("attribute", params, {})
    return Groups(inp.attr.astype(np.int64), tuple(inp.attr_values), one_hot(inp.attr, len(inp.attr_values)))


@GROUP_SOURCES.register("kmeans")
def kmeans(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """``MiniBatchKMeans`` with IDI's settings (k-means++, max_iter 1000, batch 32, reassignment ratio
    0.01, seed 42) on (L2-normalised) speaker embeddings of the train split; every row gets its nearest
    centroid, and soft memberships ``softmax(-||e - μ_k||² / temperature)`` for PGDRO."""
    from sklearn.cluster import MiniBatchKMeans

    p = _params("kmeans", params, {"K": 16, "l2norm": True, "seed": 42, "temperature": 0.1})
    if int(p["K"]) < 2:
        raise ConfigError(f"group source 'kmeans': K must be >= 2, got {p['K']!r}")
    emb = _embeddings(inp, "kmeans")
    if p["l2norm"]:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    train = inp.split == "train"
    km = MiniBatchKMeans(n_clusters=int(p["K"]), init="k-means++", max_iter=1000, batch_size=32,
                         reassignment_ratio=0.01, random_state=int(p["seed"]), n_init=3).fit(emb[train])
    dist = ((emb[:, None, :] - km.cluster_centers_[None]) ** 2).sum(axis=2)
    logits = -dist / float(p["temperature"])
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    ids = dist.argmin(axis=1).astype(np.int64)
    sizes = np.bincount(ids[train], minlength=int(p["K"]))
    return Groups(ids, tuple(f"km{k}" for k in range(int(p["K"]))), prob.astype(np.float32),
                  {"min_cluster_train": float(sizes.min()), "max_cluster_train": float(sizes.max())})


kmeans.needs = ("speaker_emb",)


@GROUP_SOURCES.register("pseudo")
def pseudo(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """Pseudo-labels of the attribute: for each corpus, a logistic regression on speaker embeddings trained
    on all *other* corpora of the dataset predicts its rows (no label of the target corpus is used).

    Each corpus's embeddings are first standardised with that corpus's own mean and deviation — no labels
    involved — so recording-condition shifts between corpora are not mistaken for the attribute.
    """
    from sklearn.linear_model import LogisticRegression

    p = _params("pseudo", params, {"C": 1.0})
    emb = _embeddings(inp, "pseudo").copy()
    corpus = inp.meta["corpus"].astype(str).to_numpy()
    for name in set(corpus):
        rows = corpus == name
        emb[rows] = (emb[rows] - emb[rows].mean(axis=0)) / np.maximum(emb[rows].std(axis=0), 1e-8)
    corpora = sorted(set(corpus))
    if len(corpora) < 2:
        raise DataError(f"group source 'pseudo' trains on the other corpora of the dataset, but it holds only "
                        f"{corpora}; add corpora, or use kmeans")
    n = len(inp.attr_values)
    prob = np.zeros((len(corpus), n), dtype=np.float32)
    info = {}
    for target in corpora:
        fit_rows = (corpus != target) & (inp.attr >= 0)
        clf = LogisticRegression(C=float(p["C"]), max_iter=2000)
        clf.fit(emb[fit_rows], inp.attr[fit_rows])
        rows = corpus == target
        prob[np.ix_(rows, clf.classes_)] = clf.predict_proba(emb[rows])
        known = rows & (inp.attr >= 0)
        info[f"pseudo_acc/{target}"] = float((prob[known].argmax(axis=1) == inp.attr[known]).mean())
    ids = prob.argmax(axis=1).astype(np.int64)
    known = inp.attr >= 0
    info["pseudo_acc"] = float((ids[known] == inp.attr[known]).mean())
    return Groups(ids, tuple(inp.attr_values), prob, info)


pseudo.needs = ("speaker_emb",)
