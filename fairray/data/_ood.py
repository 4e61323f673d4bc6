"""GEAR's out-of-distribution test sets (METHODS §4.3) as extra named test splits of a prepared dataset.

``dataset.ood`` (:class:`~fairray.config.OODConfig`) names the modalities (label -> input) whose features are
clustered, and the binary label whose per-cluster rate is shifted. :func:`ood_test_sets` runs
:func:`fairray.data.protocols.select_ood_subset` once per modality (``test_ood_<label>``) and once over all of
them together (``test_ood_joint``, GEAR's ``tav``), on the prepared rows; the loop evaluates and logs each set
like ``test``. :func:`check_ood` refuses, when the spec is loaded, a modality whose input the dataset lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fairray.errors import DataError
from fairray.inputs import InputStore, Padded, SequenceStore, VectorStore

if TYPE_CHECKING:
    from fairray._typed import Where
    from fairray.config import DatasetConfig, OODConfig

#: Prefix of every OOD test split's name (its metrics: ``test_ood_text/weighted_f1``).
PREFIX = "test_ood_"
#: The joint set over all modalities.
JOINT = "joint"
#: Input kinds whose rows give one feature vector (sequences are time-averaged).
CLUSTERABLE = ("vector", "sequence")


def set_names(cfg: OODConfig) -> list[str]:
    """The extra test splits ``cfg`` makes: one per modality, and the joint one with two or more."""
    names = [PREFIX + label for label in cfg.modalities]
    return names + [PREFIX + JOINT] if cfg.joint and len(cfg.modalities) > 1 else names


def check_ood(ds: DatasetConfig, where: Where) -> None:
    """Each modality names an input the dataset declares, of a kind that can be clustered; labels are not
    ``joint``. One ConfigError line naming the key, what exists and what to do."""
    from fairray.data import declared_inputs

    specs = declared_inputs(ds)
    have = ", ".join(s.describe() for s in specs.values()) or "none"
    for label, name in ds.ood.modalities.items():
        at = where.child("modalities").child(label)
        if label == JOINT:
            raise at.error(f"{JOINT!r} names the set over all modalities; call this modality otherwise")
        if name not in specs:
            raise at.error(f"input {name!r} is not among the dataset's inputs ({have}); this corpus has no such "
                           "modality — name one of them, or add it (dataset.extractor, dataset.inputs)")
        if specs[name].kind not in CLUSTERABLE:
            raise at.error(f"input {specs[name].describe()} is {specs[name].kind}; OOD clustering needs a vector or a "
                           "sequence input (e.g. features from dataset.extractor: minilm for transcripts)")


def _row_features(store: InputStore, rows: np.ndarray) -> np.ndarray:
    """One vector per row: the vector input, or the time average of the valid frames of a sequence."""
    if isinstance(store, VectorStore):
        return np.asarray(store.X[rows], dtype=np.float64)
    if isinstance(store, SequenceStore) and store.spec.kind == "sequence":
        out = []
        for start in range(0, len(rows), 512):
            batch: Padded = store.take(rows[start:start + 512])
            mask = batch.mask[..., None].double()
            out.append(((batch.values.double() * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, store.spec.dim or 0))
    raise DataError(f"dataset.ood: input {store.spec.describe()} cannot be clustered (vector or sequence inputs only)")


def ood_test_sets(cfg: OODConfig, meta: pd.DataFrame, split: np.ndarray, stores: Mapping[str, InputStore]
                  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``{name: sorted dataset rows}`` of each OOD test set (subsets of the test split) and what was achieved
    (``{name}/label_shift``, ``{name}/label_shift_initial``: the objective D(S) after and before annealing)."""
    from fairray.data.protocols import select_ood_subset

    column = cfg.label.column
    if column not in meta.columns:
        raise DataError(f"dataset.ood.label.column: the table has no column {column!r}; columns: {list(meta.columns)}")
    values = meta[column].astype(str).str.strip()
    y = values.isin([str(v) for v in cfg.label.positive]).to_numpy().astype(np.int64)
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    for part, rows in (("train", train), ("test", test)):
        if len(np.unique(y[rows])) < 2:
            raise DataError(f"dataset.ood.label: {column} in {cfg.label.positive} is {'always' if y[rows].all() else 'never'} "
                            f"true on the {part} split ({len(rows)} rows); the label shift needs both values")
    missing = sorted(set(cfg.modalities.values()) - set(stores))
    if missing:
        raise DataError(f"dataset.ood.modalities: input(s) {missing} are not among the prepared inputs {sorted(stores)}")
    feats = {label: (_row_features(stores[name], train), _row_features(stores[name], test))
             for label, name in cfg.modalities.items()}
    groups = {PREFIX + label: [label] for label in cfg.modalities}
    if PREFIX + JOINT in set_names(cfg):
        groups[PREFIX + JOINT] = list(cfg.modalities)
    sets: dict[str, np.ndarray] = {}
    info: dict[str, float] = {}
    for name, labels in groups.items():
        result = select_ood_subset({m: feats[m][0] for m in labels}, y[train], {m: feats[m][1] for m in labels}, y[test],
                                   k=cfg.k, fraction=cfg.fraction, moves=cfg.moves, seed=cfg.seed)
        sets[name] = test[result.selected]
        info[f"{name}/label_shift"] = result.objective
        info[f"{name}/label_shift_initial"] = result.initial_objective
    return sets, info
