"""Datasets as trials see them: features, labels, groups and a speaker-independent split.

A dataset is prepared once per sweep on the driver (:func:`prepare`) and shared with every trial
through Ray's object store; trials never touch files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairray._registry import Registry
from fairray._typed import to_plain
from fairray.errors import DataError
from fairray.inputs import FEATURES, InputSpec, InputStore, VectorStore

if TYPE_CHECKING:  # the dataset section's type only: data sits below the spec loader, which imports it
    from fairray.config import DatasetConfig
from fairray.metrics import is_missing

SPLITS = ("train", "dev", "test")

#: name -> loader(cfg, cache_root) returning (meta DataFrame, float32 features [N, D], provenance dict,
#: aux arrays aligned with the rows, e.g. {"speaker_emb": [N, 256]})
DATASETS: Registry[Callable[..., tuple[pd.DataFrame, np.ndarray, dict, dict]]] = Registry("dataset")


@DATASETS.register("ser3")
def load_ser3(cfg: DatasetConfig | None = None, cache_root: str | None = None
              ) -> tuple[pd.DataFrame, np.ndarray, dict, dict]:
    """The built-in dataset: eGeMAPSv02 functionals and speaker embeddings of RAVDESS, EmoDB and nEMO."""
    if cfg is not None:
        from fairray.data.groups import aux_extractors

        other = {a: e for a, (e, _) in aux_extractors(cfg.groups.name, dict(cfg.groups.params)).items()
                 if (a, e) != ("speaker_emb", "resemblyzer")}
        if other:
            raise DataError(f"group source {cfg.groups.name!r} needs {other} computed from audio; the built-in dataset "
                            "ships only resemblyzer speaker embeddings — use dataset.name: corpora")
    root = resources.files("fairray.data").joinpath("builtin")
    with root.joinpath("ser3.npz").open("rb") as fh:
        arrays = np.load(fh)
        features = arrays["X"].astype(np.float32)
        aux = {"speaker_emb": arrays["speaker_emb"].astype(np.float32)} if "speaker_emb" in arrays else {}
    with root.joinpath("ser3_meta.csv").open("r") as fh:
        meta = pd.read_csv(fh, dtype={"speaker": str, "language": str, "gender": str})
    provenance = json.loads(root.joinpath("ser3.json").read_text())
    return meta, features, provenance, aux


@DATASETS.register("corpora")
def load_corpora(cfg: DatasetConfig, cache_root: str | None = None) -> tuple[pd.DataFrame, np.ndarray, dict, dict]:
    """Native corpora → utterance table, features through the cache, then the protocol's split.

    Clips the audio scan skips (corrupt, empty, silent ...) are dropped and listed, never silently.
    """
    from fairray._typed import Where, build
    from fairray.data._inputs import build_inputs, decode_waveforms, rows_with_transcripts
    from fairray.data.corpora import CORPORA
    from fairray.data.features import EXTRACTORS, FeatureCache, make_extractor
    from fairray.data.groups import aux_extractors

    if cfg.cache is None and cache_root is None:
        raise DataError("dataset.cache is not set and no storage path was given for the feature cache")
    extractor = None  # None: the features the corpus ships (MOSI/MOSEI), read by its adapter
    if cfg.extractor is not None:
        extractor_cls = EXTRACTORS.get(cfg.extractor.name)
        extractor = extractor_cls(build(extractor_cls.Params, dict(cfg.extractor.params),
                                        Where("spec", "dataset.extractor.params")))
    cache = FeatureCache(cfg.cache or cache_root)
    # the group source's auxiliary arrays (e.g. speaker embeddings for kmeans/pseudo, gender probabilities of a
    # pretrained model for pseudo_hf), through the same cache, with the extractor parameters the source gives
    aux_specs = aux_extractors(cfg.groups.name, dict(cfg.groups.params))
    aux_names = tuple(aux_specs)
    extractors = [*([extractor] if extractor else []),
                  *(make_extractor(name, **params) for name, params in aux_specs.values())]
    adapters = [CORPORA.get(source.adapter).from_options(source.options) for source in cfg.corpora]
    shipping = [hasattr(adapter, "features") for adapter in adapters]
    if extractor is None and not all(shipping) and (not cfg.inputs or any(shipping)):
        source = cfg.corpora[shipping.index(False)]
        raise DataError(f"dataset.extractor is null, but corpus adapter {source.adapter!r} ships no features"
                        + ("" if not cfg.inputs else " while another corpus does (their features cannot be "
                           "stacked)") + "; name an extractor (e.g. opensmile_egemaps)"
                        + ("" if cfg.inputs else ", or give dataset.inputs (waveform, tokens) and no features"))
    tables, blocks, keys, decoded, shipped = [], [], [], [], []
    for source, adapter in zip(cfg.corpora, adapters, strict=True):
        table = adapter.load(source.root)
        # named inputs the corpus ships besides (or instead of) its vector (MOSI/MOSEI's frame sequences)
        own_inputs, own_keys = (adapter.shipped_inputs(source.root, table, cache)
                                if hasattr(adapter, "shipped_inputs") else ({}, []))
        keys += own_keys
        own = None
        if extractor is None:  # the corpus's own features, or none (the dataset then has only its named inputs)
            own = (np.asarray(adapter.features(source.root, table), dtype=np.float32) if hasattr(adapter, "features")
                   else np.zeros((len(table), 0), dtype=np.float32))
            if own.shape[1]:
                keys.append(hashlib.sha256(own.tobytes() + table["uid"].str.cat().encode()).hexdigest())
        cached = [cache.get_or_compute(table, source.root, e, num_workers=cfg.extract_workers) for e in extractors]
        for c in cached:
            if c.report.skipped:  # never a silently shorter dataset: say which clips and why
                logging.getLogger("fairray").warning("%s: %s", source.root, c.report.format())
        waves = decode_waveforms(cfg, cache, table, source.root)  # each clip decoded once, through the cache
        kept = set.intersection(set(table["uid"]), *(set(c.uids) for c in cached),
                                *(w.kept_uids for w in waves.waveforms.values()))
        keep_rows = table["uid"].isin(kept).to_numpy() & rows_with_transcripts(cfg, table, source.root)
        table = table.loc[keep_rows].reset_index(drop=True)
        tables.append(table)
        shipped.append({name: store.subset(np.flatnonzero(keep_rows)) for name, store in own_inputs.items()})
        decoded.append(waves)
        block = [np.asarray(c.X, dtype=np.float32)[pd.Index(c.uids).get_indexer(table["uid"])] for c in cached]
        blocks.append([own[keep_rows], *block] if own is not None else block)
        keys += [c.key for c in cached] + waves.keys
    meta = pd.concat(tables, ignore_index=True)
    own_inputs = _stack_shipped(cfg, shipped)  # before the vectors: a corpus without them has a vector instead
    X = np.concatenate([b[0] for b in blocks])
    aux = {name: np.concatenate([b[i + 1] for b in blocks]) for i, name in enumerate(aux_names)}
    inputs, input_keys = build_inputs(cfg, tables, decoded)
    keys += input_keys
    clash = sorted(set(own_inputs) & set(inputs))
    if clash:
        raise DataError(f"input {clash[0]!r}: a corpus gives an input of that name and dataset.inputs declares one; "
                        "rename the dataset.inputs entry")
    inputs.update(own_inputs)
    return meta, X, {"input_fingerprint": hashlib.sha256("".join(keys).encode()).hexdigest(),
                     "extractor": cfg.extractor.name if cfg.extractor else "shipped", "cache_keys": keys,
                     "feature_meta": extractor.input_meta(extractor.params) if extractor else {},
                     "inputs": inputs}, aux


def _stack_shipped(cfg: DatasetConfig, shipped: list[dict[str, InputStore]]) -> dict[str, InputStore]:
    """The corpora's shipped inputs stacked over their rows (every corpus must ship the same names)."""
    from fairray.data._sequences import concat_frames

    names = {name for corpus in shipped for name in corpus}
    out = {}
    for name in sorted(names):
        lacking = [cfg.corpora[i].adapter for i, corpus in enumerate(shipped) if name not in corpus]
        if lacking:
            raise DataError(f"input {name!r}: corpus {lacking[0]!r} does not give it while another corpus does; "
                            "give every corpus the same inputs (e.g. sequences: true on each)")
        out[name] = concat_frames([corpus[name] for corpus in shipped])
    return out


@dataclass(frozen=True)
class SERData:
    """Standardised features, labels and group codes of one dataset after filtering and splitting.

    ``attr`` and ``stratum`` hold indices into ``attr_values`` / ``strata_values`` (-1 = unknown,
    excluded from fairness metrics). ``mean``/``std`` are the train-split statistics the features were
    standardised with; checkpoints keep them so a model can be applied to new features.

    ``task`` is the dataset's ``targets`` (``"single"``, ``"multi"`` or ``"regression"``; a regression's ``y`` is
    the float32 target, ``classes`` is empty and ``soft`` is ``y`` as one column ``[N, 1]``). ``soft`` float32 ``[N, C]`` is
    the training target of every base loss: the one-hot of ``y`` for single-label data; for multi-label
    data the rater-vote shares ``soft_<class>`` (renormalised over ``classes`` when the corpus has more
    classes, unchanged otherwise), whose multi-hot ``1[soft_c > 1/|C|]`` is the evaluation target. ``y``
    is then the argmax of ``soft`` (first class on ties): what samplers, class counts, class x group
    cells (RW, DS) and LfF/DisEnt's class-wise normalisation use.
    """

    X: np.ndarray
    y: np.ndarray
    attr: np.ndarray
    stratum: np.ndarray
    split: np.ndarray
    meta: pd.DataFrame
    classes: tuple[str, ...]
    attribute: str
    attr_values: tuple[str, ...]
    stratum_name: str
    strata_values: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str
    group: np.ndarray
    group_values: tuple[str, ...]
    group_prob: np.ndarray
    #: diagnostics of the group source (e.g. pseudo-label accuracy per corpus), logged with every trial
    group_info: dict[str, float]
    #: training targets [N, C] (see the class docstring)
    soft: np.ndarray
    #: "single" or "multi" (dataset.targets)
    task: str = "single"
    #: What the feature producer knows of X's layout (e.g. ``{"stacked_layers": 13}``), in its input spec.
    feature_meta: Mapping[str, Any] = field(default_factory=dict)
    #: Named inputs besides the feature matrix (sequence, waveform, tokens), row-aligned with ``meta``.
    extra_inputs: Mapping[str, InputStore] = field(default_factory=dict)
    #: Dialogue context per row ``[N, 3]`` int64 (dialogue, position, speaker codes; -1 unknown), or None.
    context: np.ndarray | None = None
    #: Extra test splits: name -> sorted dataset rows, each a subset of the test split (``dataset.ood``: GEAR's
    #: OOD sets). The loop evaluates and logs each like ``test`` (``test_ood_text/weighted_f1``).
    test_sets: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: How each extra test split was drawn (e.g. ``test_ood_text/label_shift``), logged with every trial.
    test_set_info: Mapping[str, float] = field(default_factory=dict)

    @property
    def inputs(self) -> dict[str, InputStore]:
        """The dataset's named inputs: the feature matrix as the vector input ``features`` (when it has
        columns) and the extra inputs (see :mod:`fairray.inputs`)."""
        stores: dict[str, InputStore] = {}
        if self.X.shape[1]:
            stores[FEATURES] = VectorStore(FEATURES, self.X, self.feature_meta)
        return {**stores, **self.extra_inputs}

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def groups_frame(self, split: str) -> pd.DataFrame:
        """The attribute and stratum columns of one split (what the metrics read)."""
        return self.meta.loc[self.split == split, [self.attribute, self.stratum_name]].reset_index(drop=True)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def speaker_split(meta: pd.DataFrame, attribute: str, stratum: str, dev_fraction: float,
                  test_fraction: float, seed: int) -> np.ndarray:
    """Assign whole speakers to train/dev/test inside each stratum x attribute cell.

    Each cell sends ``round(fraction * n_speakers)`` speakers (at least one) to dev and to test and
    keeps at least one for training; the draw is seeded and independent of row order.
    """
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    speakers = meta.groupby([stratum, attribute], sort=True)["speaker"].unique()
    for (stratum_value, group), cell in speakers.items():
        cell = np.sort(cell.astype(str))
        n = len(cell)
        n_test = max(1, round(test_fraction * n))
        n_dev = max(1, round(dev_fraction * n))
        if n - n_test - n_dev < 1:
            raise DataError(
                f"{stratum}={stratum_value}, {attribute}={group}: only {n} speaker(s), too few for a "
                f"speaker-independent train/dev/test split; lower dev_fraction/test_fraction or drop it"
            )
        order = rng.permutation(cell)
        for i, spk in enumerate(order):
            assignment[spk] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    return meta["speaker"].astype(str).map(assignment).to_numpy(dtype=object)


def _apply_protocol(name: str, params: dict, meta: pd.DataFrame, X: np.ndarray, aux: dict, extra: dict
                    ) -> tuple[pd.DataFrame, np.ndarray, dict, dict]:
    """Run a protocol on the prepared table and keep features, aux arrays and named inputs aligned with its rows."""
    from fairray.data._inputs import subset_inputs
    from fairray.data.protocols import apply_protocol

    out = apply_protocol(name, meta, **params)
    rows = out.index.to_numpy()
    if not out.index.is_unique or (len(rows) and (rows.min() < 0 or rows.max() >= len(meta))):
        raise DataError(f"protocol {name!r} returned rows that are not a subset of its input's rows (it must keep "
                        "the input's index), so features could not stay aligned with them")
    return out.reset_index(drop=True), X[rows], {k: v[rows] for k, v in aux.items()}, subset_inputs(extra, rows)


def _soft_columns(meta: pd.DataFrame) -> set[str]:
    """The classes that have a ``soft_<class>`` column."""
    return {str(c)[len("soft_"):] for c in meta.columns if str(c).startswith("soft_")}


def _check_soft_columns(cfg: DatasetConfig, meta: pd.DataFrame) -> None:
    from fairray.data.corpora import vote_corpora

    missing = [f"soft_{c}" for c in cfg.emotions if f"soft_{c}" not in meta.columns]
    if missing:
        have = sorted(_soft_columns(meta))
        raise DataError(
            f"dataset {cfg.name!r}: targets: multi needs rater-vote soft labels, but column(s) {missing} are missing "
            + (f"(soft labels exist for {have}); " if have else "(it has no rater votes); ")
            + f"corpora with votes: {', '.join(vote_corpora())}"
        )
    soft = meta[[f"soft_{c}" for c in cfg.emotions]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(soft).all(axis=1) | (soft < 0).any(axis=1)
    if bad.any():
        first = meta["uid"].iloc[int(np.flatnonzero(bad)[0])] if "uid" in meta.columns else int(np.flatnonzero(bad)[0])
        raise DataError(f"dataset {cfg.name!r}: targets: multi: {int(bad.sum())} clip(s) (first {first!r}) have empty or "
                        f"negative soft_<class> values (a corpus without votes mixed in?); corpora with votes: "
                        f"{', '.join(vote_corpora())}")


def _soft_matrix(meta: pd.DataFrame, classes) -> np.ndarray:
    return meta[[f"soft_{c}" for c in classes]].to_numpy(np.float64)


def prepare(cfg: DatasetConfig, cache_root: str | None = None) -> SERData:
    """Load, filter, split and standardise a registered dataset according to ``cfg``.

    ``targets: single`` keeps the clips whose ``emotion`` is one of ``cfg.emotions``; ``targets: multi``
    keeps every clip with rater votes for at least one of them (no majority class needed) and takes
    its targets from the ``soft_<class>`` columns (see :class:`SERData`).

    Runs once per sweep on the driver (features are extracted or read from the cache here, before any
    trial starts); trials receive the result through Ray's object store.
    """
    from fairray.data._inputs import dialogue_context, subset_inputs
    from fairray.data.protocols import PROTOCOLS

    meta, X, provenance, aux = DATASETS.get(cfg.name)(cfg, cache_root)
    provenance = dict(provenance)
    extra = dict(provenance.pop("inputs", {}))  # named inputs (waveform, tokens), row-aligned with meta
    for name, store in extra.items():
        if len(store) != len(meta):
            raise DataError(f"dataset {cfg.name!r}: input {name!r} has {len(store)} rows for {len(meta)} utterances")
    multi = cfg.targets == "multi"
    regression = cfg.targets == "regression"
    label = () if multi else (cfg.target_column,) if regression else ("emotion",)
    for column in (cfg.attribute, cfg.stratum, "speaker") + label:
        if column not in meta.columns:
            raise DataError(f"dataset {cfg.name!r} has no column {column!r}; columns: {list(meta.columns)}"
                            + ("; targets: regression reads dataset.target (default reg_target): corpora with a "
                               "continuous target are mosi and mosei" if regression else ""))
    if multi:
        _check_soft_columns(cfg, meta)
    elif regression:
        pass  # the target column's values are checked below, on the rows kept
    else:
        unknown = sorted(set(cfg.emotions) - set(meta["emotion"]))
        if unknown:
            raise DataError(f"dataset {cfg.name!r}: emotion(s) {unknown} do not occur; available: "
                            f"{sorted(meta['emotion'].unique())}")
    unknown = sorted(set(cfg.languages) - set(meta[cfg.stratum].astype(str)))
    if unknown:
        raise DataError(f"dataset {cfg.name!r}: {cfg.stratum} value(s) {unknown} do not occur; available: "
                        f"{sorted(meta[cfg.stratum].astype(str).unique())}")
    keep = meta[cfg.stratum].astype(str).isin(cfg.languages)
    if multi:  # every clip with rater mass on the kept classes, majority class or not (METHODS §1.2, AIR)
        no_mass = keep & ~(_soft_matrix(meta, cfg.emotions).sum(axis=1) > 0)
        if no_mass.any():  # never a silently shorter dataset
            first = int(np.flatnonzero(no_mass.to_numpy())[0])
            logging.getLogger("fairray").warning(
                "dataset %r: %d clip(s) (first %r) have no rater votes for any of %s and are left out",
                cfg.name, int(no_mass.sum()), meta["uid"].iloc[first] if "uid" in meta.columns else first,
                list(cfg.emotions))
        keep &= ~no_mass
    elif regression:  # every row with a finite target; a row without one is listed, never silently dropped
        target = pd.to_numeric(meta[cfg.target_column], errors="coerce").to_numpy(np.float64)
        no_target = keep & ~np.isfinite(target)
        if no_target.any():
            first = int(np.flatnonzero(no_target.to_numpy())[0])
            logging.getLogger("fairray").warning(
                "dataset %r: %d row(s) (first %r) have no finite %s and are left out", cfg.name, int(no_target.sum()),
                meta["uid"].iloc[first] if "uid" in meta.columns else first, cfg.target_column)
        keep &= ~no_target
    else:
        keep &= meta["emotion"].isin(cfg.emotions)
    meta = meta.loc[keep].reset_index(drop=True)
    X = X[keep.to_numpy()]
    aux = {k: v[keep.to_numpy()] for k, v in aux.items()}
    extra = subset_inputs(extra, keep.to_numpy())
    if cfg.protocol is None:  # the default: whole speakers per stratum x attribute cell
        meta = meta.assign(split=speaker_split(meta, cfg.attribute, cfg.stratum, cfg.dev_fraction,
                                               cfg.test_fraction, cfg.split_seed))
    else:  # the protocol decides the split (emo_superb, speaker_kfold, speaker_split ...)
        # a protocol decides the split from scratch, unless it is the corpus's own split (corpus_split)
        keeps = getattr(PROTOCOLS.get(cfg.protocol.name), "reads_split", False)
        table = meta if keeps else meta.drop(columns="split", errors="ignore")
        meta, X, aux, extra = _apply_protocol(cfg.protocol.name, dict(cfg.protocol.params), table, X, aux, extra)
        if "split" not in meta.columns:
            raise DataError(f"dataset.protocol {cfg.protocol.name!r} assigns no split; a protocol that only "
                            "changes the training data belongs under dataset.resample")
    if cfg.resample is not None:  # e.g. imbalance_1to20: changes train/dev composition, never test
        meta, X, aux, extra = _apply_protocol(cfg.resample.name, dict(cfg.resample.params), meta, X, aux, extra)
    split = meta["split"].astype(str).to_numpy(dtype=object)
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise DataError(f"dataset.protocol produced split value(s) {bad}; expected {SPLITS}")

    classes = () if regression else tuple(cfg.emotions)
    if regression:  # a float target, no class list; soft holds it as one column (batches take y itself)
        y = meta[cfg.target_column].to_numpy(np.float32)
        soft = y[:, None].copy()
    elif multi:
        soft = _soft_matrix(meta, classes)
        if _soft_columns(meta) - set(classes):  # the corpus rates more classes: renormalise over the kept ones
            soft = soft / soft.sum(axis=1, keepdims=True)
        soft = soft.astype(np.float32)
        y = soft.argmax(axis=1).astype(np.int64)
    else:
        y = meta["emotion"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        soft = np.eye(len(classes), dtype=np.float32)[y]
    # unknown values (U, "", Unspecified ...: fairray.metrics.MISSING_VALUES, the set the metrics exclude) get code -1
    attr_values = tuple(sorted(v for v in meta[cfg.attribute].dropna().astype(str).unique() if not is_missing(v)))
    attr = meta[cfg.attribute].astype(str).map({v: i for i, v in enumerate(attr_values)}).fillna(-1)
    strata_values = tuple(v for v in cfg.languages)
    stratum = meta[cfg.stratum].astype(str).map({v: i for i, v in enumerate(strata_values)})

    train = split == "train"
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    Xs = ((X - mean) / std).astype(np.float32)

    test_sets, test_set_info = {}, {}
    if cfg.ood is not None:  # GEAR's OOD subsets of test (METHODS 4.3), from the standardised inputs
        from fairray.data._ood import ood_test_sets

        stores = {**({FEATURES: VectorStore(FEATURES, Xs)} if Xs.shape[1] else {}), **extra}
        test_sets, test_set_info = ood_test_sets(cfg.ood, meta, split, stores)

    from fairray.data.groups import GroupInput, infer_groups

    attr_codes = attr.to_numpy(np.int64)
    # once per (data, parameters): stored under the feature cache root's groups/ when there is one
    groups = infer_groups(cfg.groups.name, dict(cfg.groups.params),
                          GroupInput(meta, attr_codes, attr_values, split, aux), cache_root=cfg.cache or cache_root)
    # what the data is, not where it is cached or how many workers extracted it
    plain = {k: v for k, v in to_plain(cfg).items() if k not in ("cache", "extract_workers")}
    digest = hashlib.sha256(json.dumps({"cfg": plain, "input": provenance.get("input_fingerprint")},
                                       sort_keys=True, default=str).encode())
    return SERData(
        X=Xs, y=y, attr=attr_codes, stratum=stratum.to_numpy(np.int64), split=split, meta=meta,
        classes=classes, attribute=cfg.attribute, attr_values=attr_values, stratum_name=cfg.stratum,
        strata_values=strata_values, mean=mean.astype(np.float32), std=std.astype(np.float32),
        fingerprint=digest.hexdigest()[:16], group=groups.ids, group_values=groups.values, group_prob=groups.prob,
        group_info=groups.info, soft=soft, task=cfg.targets, feature_meta=dict(provenance.get("feature_meta", {})),
        extra_inputs=extra, context=dialogue_context(meta), test_sets=test_sets, test_set_info=test_set_info,
    )


def declared_inputs(cfg: DatasetConfig) -> dict[str, InputSpec]:
    """The inputs a dataset section will provide, known before any data is read (dimensions may be None
    until it is prepared): what the spec loader checks the model against.

    ``features`` (vector) unless ``extractor: null`` leaves a corpus dataset with its named inputs only
    (no corpus ships features); then each of ``dataset.inputs`` (waveform: crop length and sample rate;
    tokens: vocabulary size and pad id from the tokenizer folder)."""
    from fairray.data._inputs import declared_specs

    meta: dict[str, Any] = {}
    specs: dict[str, InputSpec] = {}
    if cfg.name == "corpora" and cfg.extractor is not None:
        from fairray._typed import Where, build
        from fairray.data.features import EXTRACTORS

        extractor_cls = EXTRACTORS.get(cfg.extractor.name)
        meta = extractor_cls.input_meta(build(extractor_cls.Params, dict(cfg.extractor.params),
                                              Where("spec", "dataset.extractor.params")))
    shipped = _shipped_specs(cfg)
    if not (cfg.name == "corpora" and cfg.extractor is None and (cfg.inputs or shipped) and not _ships_features(cfg)):
        specs[FEATURES] = InputSpec(FEATURES, "vector", meta=meta)
    return {**specs, **shipped, **declared_specs(cfg)}


def _adapters(cfg: DatasetConfig) -> list[Any]:
    from fairray.data.corpora import CORPORA

    return [CORPORA.get(c.adapter).from_options(c.options) for c in cfg.corpora] if cfg.name == "corpora" else []


def _ships_features(cfg: DatasetConfig) -> bool:
    """Whether every corpus of ``cfg`` ships its own feature vector (MOSI/MOSEI without ``sequences``): what
    ``extractor: null`` reads."""
    return all(hasattr(a, "features") and getattr(a, "ships_vector", True) for a in _adapters(cfg))


def _shipped_specs(cfg: DatasetConfig) -> dict[str, InputSpec]:
    """The named inputs the corpora ship themselves (MOSI/MOSEI ``sequences: true``), known before reading."""
    specs: dict[str, InputSpec] = {}
    for adapter in _adapters(cfg):
        specs.update(adapter.input_specs() if hasattr(adapter, "input_specs") else {})
    return specs
