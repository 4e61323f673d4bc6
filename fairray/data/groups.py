"""Group sources: which groups a debiasing method trains with (METHODS §1.3, §3.3).

A group source turns the prepared dataset into training-group ids (``-1`` = unknown) and soft
memberships. Inferred groups are for training only: every fairness metric keeps using the true
attribute. Registered sources:

- ``attribute`` — the true protected attribute (IDI ●), one-hot memberships;
- ``kmeans`` — k-means clusters of speaker embeddings (IDI ○), fitted on the train split;
- ``pseudo`` — pseudo-labels of the attribute from a classifier trained on the *other* corpora of the
  dataset (IDI ◐ without a pretrained model); its accuracy against the true attribute on each target corpus
  is reported in ``Groups.info``;
- ``pseudo_hf`` — pseudo-labels from a pretrained Hugging Face gender model in a local folder (IDI ◐ as in
  the paper: audeering's age-gender model, or any audio-classification checkpoint whose labels name
  genders). Its parameters are those of the ``hf_voice_gender`` extractor (:mod:`fairray.data.features.gender`):
  ``model_path``, ``architecture``, ``label_map``, ``batch_size``, ``device``. The model's probabilities are
  extracted per clip through the feature cache; ids are their argmax, ``prob`` the renormalised
  probabilities (PGDRO), ``info`` the accuracy against the true attribute per corpus and overall. Needs
  audio, so only ``dataset.name: corpora``.

What a source declares (function attributes, all optional):

- ``needs``: names of the auxiliary arrays it reads (keys of :data:`AUX_EXTRACTORS`, the extractor that
  computes each per clip); ``aux_params(params)``: the extractor parameters of each, from the source's own
  parameters (default: the extractor's defaults);
- ``reads``: the columns of ``GroupInput.meta`` it reads;
- ``defaults``: its parameters' defaults (a dict, or a function returning one); ``runtime_params``: those
  that do not change the result; ``version``: bump it when its output changes; ``cached`` (default True).

:func:`infer_groups` runs a source once per (data, parameters): the result is stored content-keyed under
``<feature cache root>/groups/<source>/`` (:mod:`fairray.data.features._result_cache`). The key hashes the
source name, ``version``, its parameters (defaults filled in, runtime ones left out) and everything it may
read: the attribute codes and values, the split, its ``needs`` arrays and its ``reads`` columns — a source
is given only those, so the key covers its whole input. Without a cache root it just computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
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
AUX_EXTRACTORS = {"speaker_emb": "resemblyzer", "gender_prob": "hf_voice_gender"}


def needs(name: str) -> tuple[str, ...]:
    """The auxiliary arrays (keys of :data:`AUX_EXTRACTORS`) group source ``name`` reads."""
    return getattr(GROUP_SOURCES.get(name), "needs", ())


def aux_extractors(name: str, params: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Auxiliary array → (extractor name, extractor parameters) that group source ``name`` with ``params`` reads.

    The parameters come from the source's ``aux_params(params)`` (e.g. ``pseudo_hf`` passes its model folder
    and label map to ``hf_voice_gender``); arrays it does not parametrise get the extractor's defaults.
    """
    source = GROUP_SOURCES.get(name)
    declared = getattr(source, "aux_params", None)
    extra = declared(params) if declared is not None else {}
    out = {}
    for aux in needs(name):
        given = extra.get(aux, {})  # extractor params, or (extractor name, params) to replace the default extractor
        out[aux] = (given[0], dict(given[1])) if isinstance(given, tuple) else (AUX_EXTRACTORS[aux], dict(given))
    return out


def infer_groups(name: str, params: Mapping[str, Any], inp: GroupInput,
                 cache_root: str | os.PathLike | None = None) -> Groups:
    """Run group source ``name``, or read its stored result for the same input and parameters (module docstring).

    The source sees only the ``meta`` columns and auxiliary arrays it declares (``reads``, ``needs``).
    """
    source = GROUP_SOURCES.get(name)
    reads = [c for c in getattr(source, "reads", ()) if c in inp.meta.columns]
    inp = dataclasses.replace(inp, meta=inp.meta.loc[:, reads],
                              aux={k: v for k, v in inp.aux.items() if k in needs(name)})
    if cache_root is None or not getattr(source, "cached", True):
        return source(inp, params)
    from fairray.data.features._result_cache import ResultCache

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        g = source(inp, params)
        return {"ids": g.ids, "prob": g.prob}, {"values": list(g.values), "info": dict(g.info)}

    cache = ResultCache(cache_root, "groups")
    result = cache.get_or_compute_result(name, group_identity(name, params, inp), compute)
    logging.getLogger("fairray").info("group source %r: %s (%s/%s)", name, "read from the cache" if result.hit
                                      else "computed and stored", cache.uri, result.key[:12])
    return Groups(result.arrays["ids"], tuple(result.record["values"]), result.arrays["prob"],
                  {k: float(v) for k, v in result.record["info"].items()})


def group_identity(name: str, params: Mapping[str, Any], inp: GroupInput) -> dict[str, Any]:
    """What determines group source ``name``'s result: its version, parameters and input fingerprint."""
    source = GROUP_SOURCES.get(name)
    defaults = getattr(source, "defaults", None)
    defaults = defaults() if callable(defaults) else defaults
    runtime = set(getattr(source, "runtime_params", ()))
    key_params = {k: v for k, v in {**(defaults or {}), **params}.items() if k not in runtime}
    return {"source": name, "version": getattr(source, "version", 1), "params": _plain(key_params),
            "inputs": input_fingerprint(inp)}


def input_fingerprint(inp: GroupInput) -> dict[str, Any]:
    """Digests of everything in ``inp``: attribute codes and values, split, every aux array and meta column."""
    return {"n": len(inp.attr), "attr": _digest(inp.attr), "attr_values": list(inp.attr_values),
            "split": _digest(inp.split), "aux": {k: _digest(v) for k, v in sorted(inp.aux.items())},
            "meta": {str(c): _digest(inp.meta[c]) for c in inp.meta.columns}}


def _digest(values: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (numbers) or of its values as text (strings, objects)."""
    a = np.asarray(values)
    digest = hashlib.sha256(f"{a.shape}".encode())
    if a.dtype.kind in "biufc":
        digest.update(a.dtype.str.encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    else:
        digest.update("\x1f".join(map(str, a.ravel().tolist())).encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Parameters as JSON data (mappings → dicts, sequences → lists, numpy scalars → Python)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


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


attribute.cached = False  # a copy of the truth: nothing to store


@GROUP_SOURCES.register("kmeans")
def kmeans(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """``MiniBatchKMeans`` with IDI's settings (k-means++, max_iter 1000, batch 32, reassignment ratio
    0.01, seed 42) on (L2-normalised) speaker embeddings of the train split; every row gets its nearest
    centroid, and soft memberships ``softmax(-||e - μ_k||² / temperature)`` for PGDRO.

    ``embedder``: the speaker model — ``resemblyzer`` (weights in its wheel; the built-in data ships its
    embeddings) or ``ecapa`` (SpeechBrain ECAPA-TDNN, IDI's choice; ``embedder_params: {model_path: ...}``),
    both through the feature cache."""
    from sklearn.cluster import MiniBatchKMeans

    p = _params("kmeans", params, kmeans.defaults)
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
kmeans.defaults = {"K": 16, "l2norm": True, "seed": 42, "temperature": 0.1, "embedder": "resemblyzer",
                   "embedder_params": {}}
SPEAKER_EMBEDDERS = ("resemblyzer", "ecapa")


def _speaker_embedder(params: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    p = _params("kmeans", params, kmeans.defaults)
    if p["embedder"] not in SPEAKER_EMBEDDERS:
        raise ConfigError(f"group source 'kmeans': embedder must be one of {list(SPEAKER_EMBEDDERS)}, "
                          f"got {p['embedder']!r}")
    if not isinstance(p["embedder_params"], Mapping):
        raise ConfigError(f"group source 'kmeans': embedder_params must be a mapping, got {p['embedder_params']!r}")
    return {"speaker_emb": (p["embedder"], dict(p["embedder_params"]))}


kmeans.aux_params = _speaker_embedder


@GROUP_SOURCES.register("pseudo")
def pseudo(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """Pseudo-labels of the attribute: for each corpus, a logistic regression on speaker embeddings trained
    on all *other* corpora of the dataset predicts its rows (no label of the target corpus is used).

    Each corpus's embeddings are first standardised with that corpus's own mean and deviation — no labels
    involved — so recording-condition shifts between corpora are not mistaken for the attribute.
    """
    from sklearn.linear_model import LogisticRegression

    p = _params("pseudo", params, pseudo.defaults)
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
pseudo.reads = ("corpus",)
pseudo.defaults = {"C": 1.0}


def _hf_defaults() -> dict[str, Any]:
    from fairray.data.features.gender import HFVoiceGender

    return dataclasses.asdict(HFVoiceGender.Params())


def _hf_extractor(params: Mapping[str, Any]) -> Any:
    """The ``hf_voice_gender`` extractor of ``pseudo_hf``'s parameters (validated; no model is loaded)."""
    from fairray.data.features import make_extractor

    p = _params("pseudo_hf", params, _hf_defaults())
    return make_extractor("hf_voice_gender", **p)


@GROUP_SOURCES.register("pseudo_hf")
def pseudo_hf(inp: GroupInput, params: Mapping[str, Any]) -> Groups:
    """Pseudo-labels of a pretrained gender model: ids = argmax of its probabilities mapped to the attribute's
    values (``label_map``, renormalised over the mapped labels), ``prob`` = those probabilities (PGDRO), and
    ``info`` = accuracy against the true attribute per corpus (``pseudo_acc/<corpus>``) and overall
    (``pseudo_acc``), over rows whose attribute is known. Attribute values no label maps to get probability 0.
    """
    extractor = _hf_extractor(params)
    if "gender_prob" not in inp.aux:
        raise DataError("group source 'pseudo_hf' reads gender probabilities that extractor 'hf_voice_gender' "
                        "computes from the audio, and this dataset has none (the built-in ser3 ships no audio); "
                        "use dataset.name: corpora")
    for key, value in extractor.params.label_map.items():
        if value is not None and value not in inp.attr_values:
            raise ConfigError(f"group source 'pseudo_hf': label_map maps {key!r} to {value!r}, which is not a value "
                              f"of the protected attribute (its values: {', '.join(inp.attr_values)})")
    raw = np.asarray(inp.aux["gender_prob"], dtype=np.float32)
    if raw.shape != (len(inp.attr), extractor.dim):
        raise DataError(f"group source 'pseudo_hf': gender probabilities of shape {raw.shape}; expected "
                        f"({len(inp.attr)}, {extractor.dim}) for the columns {extractor.columns}")
    prob = np.zeros((len(raw), len(inp.attr_values)), dtype=np.float32)
    prob[:, [inp.attr_values.index(v) for v in extractor.columns]] = raw
    ids = prob.argmax(axis=1).astype(np.int64)
    known = inp.attr >= 0
    info = {}
    if "corpus" in inp.meta.columns:
        corpus = inp.meta["corpus"].astype(str).to_numpy()
        for name in sorted(set(corpus)):
            rows = known & (corpus == name)
            if rows.any():
                info[f"pseudo_acc/{name}"] = float((ids[rows] == inp.attr[rows]).mean())
    if known.any():
        info["pseudo_acc"] = float((ids[known] == inp.attr[known]).mean())
    return Groups(ids, tuple(inp.attr_values), prob, info)


pseudo_hf.needs = ("gender_prob",)
pseudo_hf.reads = ("corpus",)
pseudo_hf.defaults = _hf_defaults
pseudo_hf.runtime_params = ("batch_size", "device")
pseudo_hf.aux_params = lambda params: {"gender_prob": dataclasses.asdict(_hf_extractor(params).params)}
