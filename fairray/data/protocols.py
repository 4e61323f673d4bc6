"""Named, parameterised evaluation protocols (METHODS §4): utterance table in, split table out.

Each protocol is a function ``protocol(table, **params) -> table`` registered in :data:`PROTOCOLS`. It
returns a new table with a ``split`` column (``fold`` for k-fold corpora) and never mutates its input;
rows a protocol drops are dropped with the input's index kept, so results stay aligned with features.

>>> table = CORPORA.get("cremad")(metadata_only=True).load("crema-d")              # doctest: +SKIP
>>> table = apply_protocol("emo_superb", table, folder="crema-d/emo-superb", fold=1)  # doctest: +SKIP
>>> table = apply_protocol("imbalance_1to20", table, seed=0)                        # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairray._registry import Registry
from fairray.data import speaker_split as assign_speaker_splits
from fairray.data.corpora.cremad import CLASSES as CREMAD_CLASSES
from fairray.data.corpora.cremad import load_emo_superb_fold
from fairray.errors import ConfigError, DataError

PROTOCOLS: Registry[Callable[..., pd.DataFrame]] = Registry("protocol")


def check_protocol_params(name: str, params: Mapping[str, object]) -> None:
    """Unknown protocol, unknown or missing parameters → :class:`ConfigError` (used at spec load time)."""
    fn = PROTOCOLS.get(name)
    signature = inspect.signature(fn)
    accepted = list(signature.parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"protocol {name!r}: unknown parameter(s) {unknown}; valid: {accepted}")
    required = [p.name for p in list(signature.parameters.values())[1:]
                if p.default is inspect.Parameter.empty and p.name not in params]
    if required:
        raise ConfigError(f"protocol {name!r}: missing required parameter(s) {required}")


def apply_protocol(name: str, table: pd.DataFrame, **params) -> pd.DataFrame:
    """Run the registered protocol ``name``; unknown or missing parameters are a :class:`ConfigError`."""
    check_protocol_params(name, params)
    return PROTOCOLS.get(name)(table, **params)


def _need_columns(table: pd.DataFrame, columns: tuple[str, ...], protocol: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"protocol {protocol!r}: the table has no column(s) {missing}; got {list(table.columns)}")


# ---------------------------------------------------------------------------------------------------------
# EMO-SUPERB folds (METHODS §4.2)

#: Per-class label columns the EMO-SUPERB labels replace (so that no column disagrees with them).
_LABEL_PREFIXES = ("votes_", "soft_", "multi_")


@PROTOCOLS.register("emo_superb")
def emo_superb(table: pd.DataFrame, *, folder: str | Path, fold: int, labels: str = "emo_superb") -> pd.DataFrame:
    """Split CREMA-D by EMO-SUPERB fold ``fold`` (``labels_consensus_{fold}.csv`` in ``folder``).

    Rows are matched on the clip name (column ``clip``, else the stem of ``path``) against the file's
    ``FileName``. ``labels="emo_superb"`` (default, needed to reproduce ES/IDI) replaces ``soft_*``,
    ``multi_*`` and ``majority`` with the file's smoothed labels and drops ``votes_*``/``n_votes``, which
    the ES labels do not match for every clip; ``labels="table"`` keeps the table's own labels.
    """
    if labels not in ("emo_superb", "table"):
        raise ConfigError(f"protocol 'emo_superb': labels must be 'emo_superb' or 'table', got {labels!r}")
    es = load_emo_superb_fold(folder, fold).set_index("clip")
    source = Path(folder) / f"labels_consensus_{fold}.csv"
    if "clip" in table.columns:
        clip = table["clip"].astype(str)
    else:
        _need_columns(table, ("path",), "emo_superb")
        clip = table["path"].astype(str).map(lambda p: Path(p).stem)
    absent = ~clip.isin(es.index)
    if absent.any():
        raise DataError(f"{source}: no row for clip {clip[absent].iloc[0]!r} "
                        f"({int(absent.sum())} of the table's clips are absent)")
    matched = es.loc[clip.to_numpy()]
    if "gender" in table.columns:
        clash = table["gender"].isin(("F", "M")).to_numpy() & (table["gender"].to_numpy() != matched["gender"].to_numpy())
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise DataError(f"{source}: clip {clip.iloc[i]!r} has Gender {matched['gender'].iloc[i]!r} but the "
                            f"table says {table['gender'].iloc[i]!r}")
    out = table.copy()
    out["split"] = matched["split"].to_numpy()
    out["fold"] = int(fold)
    if labels == "emo_superb":
        stale = [c for c in out.columns if c.startswith(_LABEL_PREFIXES) or c in ("majority", "n_votes")]
        out = out.drop(columns=stale)
        for c in CREMAD_CLASSES:
            out[f"soft_{c}"] = matched[f"soft_{c}"].to_numpy()
        for c in CREMAD_CLASSES:
            out[f"multi_{c}"] = matched[f"multi_{c}"].to_numpy()
        out["majority"] = matched["majority"].to_numpy()
        out["label_source"] = "emo_superb"
    return out


# ---------------------------------------------------------------------------------------------------------
# IDI 1:20 gender-imbalance simulation (METHODS §4.1)


@PROTOCOLS.register("imbalance_1to20")
def imbalance_1to20(table: pd.DataFrame, *, ratio: int = 20, seed: int = 0, attribute: str = "gender",
                    label: str = "majority", splits: tuple[str, ...] = ("train", "dev"),
                    reference: str = "train", majority: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Simulate IDI's 1:``ratio`` imbalance of ``attribute`` inside every class, on ``splits`` only.

    For each split in ``splits``: drop clips without a strict-majority class (``label`` missing); per
    class keep every clip of that class's majority group — the group with more class clips in the
    original ``reference`` split, or the one ``majority`` names for that class — and a seeded random
    ``floor(n_major / ratio)`` of the other groups' clips. Other splits (test) are returned untouched.
    The draw is independent of row order.

    ``majority`` reproduces IDI's class-dependent direction on corpora balanced by design (RAVDESS,
    EmoDB, nEMO have near-equal gender counts per class), e.g. CREMA-D fold 1's
    ``{anger: M, neutral: M, fear: F, happiness: F, sadness: F}``: the imbalance then also correlates the
    attribute with the class, as in the paper.
    """
    if not isinstance(ratio, int | np.integer) or ratio < 1:
        raise ConfigError(f"protocol 'imbalance_1to20': ratio must be an integer >= 1, got {ratio!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"protocol 'imbalance_1to20': seed must be a non-negative integer, got {seed!r}")
    _need_columns(table, ("split", attribute, label), "imbalance_1to20")
    split_of = table["split"].astype(str).to_numpy()
    labelled = table[label].notna().to_numpy()
    cls_of = table[label].astype(str).to_numpy()
    group_of = table[attribute].astype(str).to_numpy()
    ref = (split_of == reference) & labelled
    if not ref.any():
        raise DataError(f"protocol 'imbalance_1to20': no {reference!r} clip with a {label!r} class")
    counts = pd.crosstab(cls_of[ref], group_of[ref])
    given = {str(k): str(v) for k, v in (majority or {}).items()}
    unknown = sorted(set(given) - set(counts.index.astype(str)))
    if unknown:
        raise ConfigError(f"protocol 'imbalance_1to20': majority names class(es) {unknown} that have no "
                          f"{reference!r} clip; classes: {sorted(counts.index.astype(str))}")
    bad = sorted(v for v in set(given.values()) if v not in set(counts.columns.astype(str)))
    if bad:
        raise ConfigError(f"protocol 'imbalance_1to20': majority value(s) {bad} are not {attribute} values "
                          f"{sorted(counts.columns.astype(str))}")
    majority = {}
    for cls, row in counts.iterrows():
        if str(cls) in given:
            majority[str(cls)] = given[str(cls)]
            continue
        top = row[row == row.max()]
        if len(top) > 1:
            raise DataError(f"protocol 'imbalance_1to20': class {cls!r} has a tie between {list(top.index)} "
                            f"({int(row.max())} {reference} clips each); no majority {attribute}")
        majority[str(cls)] = str(top.index[0])
    # Candidates are ordered by uid before drawing, so the draw does not depend on row order.
    order = table["uid"].astype(str).to_numpy() if "uid" in table.columns else np.arange(len(table))
    keep = np.ones(len(table), dtype=bool)
    for i_split, split in enumerate(splits):
        in_split = split_of == split
        keep[in_split & ~labelled] = False
        for i_class, cls in enumerate(sorted(set(cls_of[in_split & labelled]))):
            if cls not in majority:
                raise DataError(f"protocol 'imbalance_1to20': class {cls!r} occurs in {split!r} but has no "
                                f"{reference!r} clip, so its majority {attribute} is undefined")
            cell = in_split & labelled & (cls_of == cls)
            major = cell & (group_of == majority[cls])
            others = np.flatnonzero(cell & ~major)
            others = others[np.argsort(order[others], kind="stable")]
            n_keep = min(int(major.sum()) // int(ratio), len(others))
            rng = np.random.default_rng([int(seed), i_split, i_class])
            keep[others] = False
            keep[rng.choice(others, size=n_keep, replace=False)] = True
    return table.iloc[np.flatnonzero(keep)].copy()


imbalance_1to20.needs_split = True  # it resamples inside existing splits: dataset.resample, not dataset.protocol


# ---------------------------------------------------------------------------------------------------------
# Speaker-independent split by language x gender


@PROTOCOLS.register("speaker_split")
def speaker_split(table: pd.DataFrame, *, attribute: str = "gender", stratum: str = "language",
                  dev_fraction: float = 0.15, test_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Whole speakers to train/dev/test inside each ``stratum`` x ``attribute`` cell (as the built-in data).

    Replaces any existing ``split``. For multi-corpus benchmarks stratified by language; speaker ids
    must be unique across corpora (the adapters prefix them with the corpus).
    """
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ConfigError(f"protocol 'speaker_split': {name} must lie in (0, 0.5), got {value!r}")
    _need_columns(table, ("speaker", attribute, stratum), "speaker_split")
    split = assign_speaker_splits(table, attribute, stratum, dev_fraction, test_fraction, seed)
    return table.assign(split=split)


@PROTOCOLS.register("corpus_split")
def corpus_split(table: pd.DataFrame) -> pd.DataFrame:
    """The split the corpus ships (MELD's and MELD-ST's train/dev/test files, the ``split`` column of its
    table), unchanged. It is speaker-independent only where the corpus's own split is: MELD's main cast speaks
    in every split, as in the papers that report on it."""
    _need_columns(table, ("split",), "corpus_split")
    split = table["split"].astype(str)
    bad = sorted(set(split) - {"train", "dev", "test"})
    if bad:
        raise DataError(f"protocol 'corpus_split': split value(s) {bad} are not train/dev/test; this corpus "
                        "ships no usable split, use speaker_split or speaker_kfold")
    return table.copy()


corpus_split.reads_split = True  # prepare keeps the table's split column for it (other protocols start afresh)


@PROTOCOLS.register("speaker_kfold")
def speaker_kfold(table: pd.DataFrame, *, k: int = 5, fold: int = 1, attribute: str = "gender",
                  stratum: str = "language", seed: int = 0) -> pd.DataFrame:
    """Speaker-independent k folds for any corpus, balanced inside each ``stratum`` x ``attribute`` cell.

    Each cell's speakers are shuffled (seeded) and dealt round-robin into folds 1..k; fold ``fold`` is
    test, fold ``fold % k + 1`` is dev (EMO-SUPERB's cyclic convention, METHODS §4.2), the rest train.
    Adds ``fold`` (the speaker's fold) and ``split``; a cell needs at least three speakers so that
    train, dev and test each get one of them in every fold.
    """
    if k < 3 or not 1 <= fold <= k:
        raise ConfigError(f"protocol 'speaker_kfold': needs k >= 3 and 1 <= fold <= k, got k={k!r}, fold={fold!r}")
    _need_columns(table, ("speaker", attribute, stratum), "speaker_kfold")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    cells = table.groupby([stratum, attribute], sort=True)["speaker"].unique()
    for (stratum_value, group), speakers in cells.items():
        speakers = np.sort(speakers.astype(str))
        if len(speakers) < 3:
            raise DataError(f"protocol 'speaker_kfold': {stratum}={stratum_value}, {attribute}={group} has only "
                            f"{len(speakers)} speaker(s); each cell needs at least 3")
        offset = int(rng.integers(k))  # spread remainders over folds instead of always filling fold 1
        for i, spk in enumerate(rng.permutation(speakers)):
            fold_of[spk] = (i + offset) % k + 1
    folds = table["speaker"].astype(str).map(fold_of).to_numpy()
    dev_fold = fold % k + 1
    split = np.where(folds == fold, "test", np.where(folds == dev_fold, "dev", "train")).astype(object)
    return table.assign(fold=folds, split=split)


# ---------------------------------------------------------------------------------------------------------
# GEAR out-of-distribution test subsets (METHODS §4.3)

#: K-means restarts when clustering the training features.
KMEANS_N_INIT = 10


@dataclass(frozen=True)
class OODSelection:
    """Result of :func:`select_ood_subset`: ``selected`` are sorted row indices into the test set."""

    selected: np.ndarray
    objective: float
    initial_objective: float
    accepted_moves: int
    test_clusters: dict[str, np.ndarray]
    train_rate: dict[str, np.ndarray]


def label_shift_objective(clusters: np.ndarray, labels: np.ndarray, selected: np.ndarray,
                          rho: np.ndarray) -> float:
    """``D(S) = Σ_k (|S_k|/|S|)·|P_S(y=1|k) − ρ_k|`` for one modality's cluster ids (METHODS §4.3)."""
    c = clusters[selected]
    y = labels[selected]
    size = np.bincount(c, minlength=len(rho))
    pos = np.bincount(c, weights=y, minlength=len(rho))
    return float(np.abs(pos - rho * size).sum() / len(selected))


def _as_modalities(features: np.ndarray | Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    mods = dict(features) if isinstance(features, Mapping) else {"features": features}
    if not mods:
        raise DataError(f"gear_ood: {what} has no feature matrix")
    out = {}
    for name, x in mods.items():
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or not np.isfinite(x).all():
            raise DataError(f"gear_ood: {what} {name!r} must be a finite 2-d matrix [samples, dims], "
                            f"got shape {x.shape}")
        out[str(name)] = x
    return out


def _binary(labels: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise DataError(f"gear_ood: {what} must be a 1-d array of 0/1 labels")
    return y.astype(np.int64)


def select_ood_subset(train_features: np.ndarray | Mapping[str, np.ndarray], train_labels: np.ndarray,
                      test_features: np.ndarray | Mapping[str, np.ndarray], test_labels: np.ndarray, *,
                      k: int = 10, fraction: float = 0.5, moves: int = 20_000, t0: float = 1.0,
                      cooling: float = 0.995, seed: int = 0) -> OODSelection:
    """Pick ``round(fraction·n_test)`` test samples that maximise the label shift ``D(S)`` per cluster.

    Features are standardised with the training statistics and clustered by K-means fitted on train;
    ``ρ_k`` is the training positive rate of cluster k. Simulated annealing swaps one selected and one
    unselected test sample of the same label (so the subset keeps the test set's positive count
    ``round(n_pos·|S|/n_test)``), accepts a worse move with probability ``exp(ΔD/T)`` and cools
    ``T ← cooling·T`` from ``t0``; the best subset seen is returned. Several modalities (a mapping of
    matrices) maximise the sum of their objectives (GEAR's ``tav`` set).
    """
    from sklearn.cluster import KMeans

    for name, value, ok in (("k", k, isinstance(k, int | np.integer) and k >= 1),
                            ("fraction", fraction, 0 < fraction < 1),
                            ("moves", moves, isinstance(moves, int | np.integer) and moves >= 0),
                            ("t0", t0, t0 > 0), ("cooling", cooling, 0 < cooling <= 1),
                            ("seed", seed, isinstance(seed, int | np.integer) and seed >= 0)):
        if not ok:
            raise ConfigError(f"gear_ood: parameter {name} is invalid, got {value!r}")
    train = _as_modalities(train_features, "train_features")
    test = _as_modalities(test_features, "test_features")
    if set(train) != set(test):
        raise DataError(f"gear_ood: train and test modalities differ: {sorted(train)} vs {sorted(test)}")
    y_train = _binary(train_labels, "train_labels")
    y = _binary(test_labels, "test_labels")
    n = len(y)
    for name in train:
        if len(train[name]) != len(y_train) or len(test[name]) != n:
            raise DataError(f"gear_ood: modality {name!r} has {len(train[name])}/{len(test[name])} rows for "
                            f"{len(y_train)}/{n} train/test labels")
        if len(train[name]) < k:
            raise ConfigError(f"gear_ood: k={k} clusters but only {len(train[name])} training samples")

    clusters, rhos = {}, {}
    for name in sorted(train):
        mean = train[name].mean(axis=0)
        std = train[name].std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        km = KMeans(n_clusters=int(k), n_init=KMEANS_N_INIT, random_state=int(seed))
        train_ids = km.fit_predict((train[name] - mean) / std)
        size = np.bincount(train_ids, minlength=k)
        rhos[name] = np.bincount(train_ids, weights=y_train, minlength=k) / np.maximum(size, 1)
        clusters[name] = km.predict((test[name] - mean) / std)

    m = int(round(fraction * n))
    if not 0 < m < n:
        raise ConfigError(f"gear_ood: fraction={fraction} of {n} test samples selects {m}; need 0 < |S| < n")
    n_pos = int(y.sum())
    m_pos = int(round(n_pos * m / n))
    rng = np.random.default_rng(int(seed))
    inside = {lab: rng.permutation(np.flatnonzero(y == lab)) for lab in (0, 1)}
    want = {1: m_pos, 0: m - m_pos}
    outside = {lab: inside[lab][want[lab]:].copy() for lab in (0, 1)}
    inside = {lab: inside[lab][:want[lab]].copy() for lab in (0, 1)}

    names = sorted(clusters)
    cid = np.stack([clusters[name] for name in names])          # [M, n]
    rho = np.stack([rhos[name] for name in names])              # [M, k]
    selected = np.concatenate([inside[0], inside[1]])
    size = np.stack([np.bincount(cid[j, selected], minlength=k) for j in range(len(names))]).astype(float)
    pos = np.stack([np.bincount(cid[j, selected], weights=y[selected], minlength=k)
                    for j in range(len(names))])
    current = float(np.abs(pos - rho * size).sum())            # = m · Σ_modalities D(S)
    best, best_sets, accepted = current, (inside[0].copy(), inside[1].copy()), 0
    initial = current
    temperature = float(t0)
    draws = rng.random((int(moves), 4))
    rows = np.arange(len(names))
    for u_pick, u_in, u_out, u_accept in draws:
        lab = 1 if u_pick * m < len(inside[1]) else 0
        if len(outside[lab]) == 0:
            lab = 1 - lab
        if len(outside[lab]) == 0 or len(inside[lab]) == 0:
            break  # no swap keeps the label counts
        a = int(u_in * len(inside[lab]))
        b = int(u_out * len(outside[lab]))
        i, j = inside[lab][a], outside[lab][b]
        ka, kb = cid[:, i], cid[:, j]
        old = np.abs(pos[rows, ka] - rho[rows, ka] * size[rows, ka]) + np.abs(
            pos[rows, kb] - rho[rows, kb] * size[rows, kb])
        new = np.abs(pos[rows, ka] - lab - rho[rows, ka] * (size[rows, ka] - 1)) + np.abs(
            pos[rows, kb] + lab - rho[rows, kb] * (size[rows, kb] + 1))
        delta = float(np.where(ka == kb, 0.0, new - old).sum())
        if delta >= 0 or u_accept < math.exp(delta / m / temperature):
            size[rows, ka] -= 1
            pos[rows, ka] -= lab
            size[rows, kb] += 1
            pos[rows, kb] += lab
            inside[lab][a], outside[lab][b] = j, i
            current += delta
            accepted += 1
            if current > best + 1e-12:
                best, best_sets = current, (inside[0].copy(), inside[1].copy())
        temperature *= cooling
        if temperature == 0.0:
            temperature = np.finfo(float).tiny
    chosen = np.sort(np.concatenate(best_sets))
    objective = sum(label_shift_objective(clusters[nm], y, chosen, rhos[nm]) for nm in names)
    return OODSelection(selected=chosen, objective=float(objective), initial_objective=initial / m,
                        accepted_moves=accepted, test_clusters=clusters, train_rate=rhos)


@PROTOCOLS.register("gear_ood")
def gear_ood(table: pd.DataFrame, *, features: np.ndarray | Mapping[str, np.ndarray], label: str | np.ndarray,
             k: int = 10, fraction: float = 0.5, moves: int = 20_000, t0: float = 1.0, cooling: float = 0.995,
             seed: int = 0, column: str = "ood", train_split: str = "train", test_split: str = "test"
             ) -> pd.DataFrame:
    """Mark GEAR's OOD test subset: a boolean ``column``, true for the selected ``test_split`` rows.

    ``features`` ([N, D] aligned with the table's rows, or a mapping of such matrices per modality) and
    ``label`` (a column name or an array of 0/1) are passed in; the ``split`` is kept and the objective
    values go to ``attrs["gear_ood"]``. See :func:`select_ood_subset`.
    """
    _need_columns(table, ("split",), "gear_ood")
    mods = _as_modalities(features, "features")
    for name, x in mods.items():
        if len(x) != len(table):
            raise DataError(f"gear_ood: features {name!r} has {len(x)} rows for a table of {len(table)}")
    if isinstance(label, str):
        _need_columns(table, (label,), "gear_ood")
        y = table[label].to_numpy()
    else:
        y = np.asarray(label)
        if len(y) != len(table):
            raise DataError(f"gear_ood: label has {len(y)} values for a table of {len(table)} rows")
    is_train = (table["split"] == train_split).to_numpy()
    is_test = (table["split"] == test_split).to_numpy()
    if not is_train.any() or not is_test.any():
        raise DataError(f"gear_ood: need rows with split {train_split!r} and {test_split!r}")
    result = select_ood_subset({n: x[is_train] for n, x in mods.items()}, y[is_train],
                               {n: x[is_test] for n, x in mods.items()}, y[is_test],
                               k=k, fraction=fraction, moves=moves, t0=t0, cooling=cooling, seed=seed)
    mask = np.zeros(len(table), dtype=bool)
    mask[np.flatnonzero(is_test)[result.selected]] = True
    out = table.assign(**{column: mask})
    out.attrs["gear_ood"] = {"objective": result.objective, "initial_objective": result.initial_objective,
                             "accepted_moves": result.accepted_moves, "k": int(k), "seed": int(seed),
                             "n_selected": int(mask.sum())}
    return out
