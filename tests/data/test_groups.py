"""Group sources: true attribute, k-means over speaker embeddings, leave-one-corpus-out pseudo-labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairray.data.groups import GROUP_SOURCES, GroupInput, Groups
from fairray.errors import ConfigError, DataError


def _input(emb, attr, corpus=None, split=None):
    n = len(attr)
    meta = pd.DataFrame({"corpus": corpus if corpus is not None else ["c"] * n})
    return GroupInput(meta, np.asarray(attr), ("F", "M"), np.asarray(split if split is not None else ["train"] * n,
                                                                      dtype=object), {"speaker_emb": emb})


def test_attribute_is_the_truth_with_unknowns_kept_unknown():
    g = GROUP_SOURCES.get("attribute")(_input(np.zeros((3, 2)), [0, 1, -1]), {})
    assert g.ids.tolist() == [0, 1, -1] and g.prob.tolist() == [[1, 0], [0, 1], [0, 0]]
    with pytest.raises(ConfigError, match="unknown parameter"):
        GROUP_SOURCES.get("attribute")(_input(np.zeros((1, 2)), [0]), {"K": 2})


def test_kmeans_recovers_separated_speakers_and_fits_on_train_only():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    emb = np.concatenate([c + 0.05 * rng.standard_normal((40, 8)) for c in centres])
    split = np.array(["train"] * 120, dtype=object)
    split[::10] = "test"
    g = GROUP_SOURCES.get("kmeans")(_input(emb, [0] * 120, split=split), {"K": 3})
    blocks = g.ids.reshape(3, 40)
    assert all(len(set(b)) == 1 for b in blocks) and len({b[0] for b in blocks}) == 3
    assert np.allclose(g.prob.sum(axis=1), 1.0) and g.values == ("km0", "km1", "km2")
    assert g.info["min_cluster_train"] == 36  # 40 per speaker minus the 4 test rows
    with pytest.raises(ConfigError, match="K must be >= 2"):
        GROUP_SOURCES.get("kmeans")(_input(emb, [0] * 120), {"K": 1})


def test_pseudo_labels_come_from_the_other_corpora():
    rng = np.random.default_rng(1)
    attr = np.tile([0, 1], 60)
    emb = rng.standard_normal((120, 6))
    emb[:, 0] += np.where(attr == 1, 3.0, -3.0)  # gender direction shared by both corpora
    corpus = np.repeat(["a", "b"], 60)
    emb[corpus == "b", 1] += 10.0  # a corpus shift the classifier must not need
    g = GROUP_SOURCES.get("pseudo")(_input(emb, attr, corpus=corpus), {})
    assert g.info["pseudo_acc/a"] > 0.95 and g.info["pseudo_acc/b"] > 0.95
    assert g.info["pseudo_acc"] == pytest.approx((g.ids == attr).mean())
    assert np.allclose(g.prob.sum(axis=1), 1.0, atol=1e-6)


def test_pseudo_needs_another_corpus_and_embeddings():
    with pytest.raises(DataError, match="other corpora"):
        GROUP_SOURCES.get("pseudo")(_input(np.zeros((4, 2)), [0, 1, 0, 1]), {})
    inp = GroupInput(pd.DataFrame({"corpus": ["a"]}), np.array([0]), ("F", "M"), np.array(["train"]), {})
    with pytest.raises(DataError, match="speaker embeddings"):
        GROUP_SOURCES.get("kmeans")(inp, {})


def test_inferred_groups_on_the_builtin_data():
    """Real speaker embeddings (resemblyzer, shipped with ser3): pseudo gender from the other corpora and
    k-means clusters; a method trains on them while every fairness metric keeps the true attribute."""
    import tempfile

    from fairray.config import DatasetConfig, NamedParams, build_spec
    from fairray.data import prepare
    from fairray.train import LocalSession, run_trial

    pseudo = prepare(DatasetConfig(groups=NamedParams("pseudo")))
    assert pseudo.group_info["pseudo_acc"] > 0.95  # measured 0.982 (emodb 0.990, nemo 0.971, ravdess 0.995)
    assert set(pseudo.group_info) == {"pseudo_acc", "pseudo_acc/emodb", "pseudo_acc/nemo", "pseudo_acc/ravdess"}

    km = prepare(DatasetConfig(groups=NamedParams("kmeans", {"K": 16})))
    train = km.split == "train"
    purity = sum(max(((km.group[train] == k) & (km.attr[train] == a)).sum() for a in (0, 1))
                 for k in range(16)) / train.sum()
    assert purity > 0.95 and len(km.group_values) == 16  # 16 clusters of a few speakers split by gender

    raw = {"name": "g", "method": {"name": "gdro"}, "model": {"hidden": 16}, "train": {"epochs": 3},
           "dataset": {"groups": {"name": "kmeans", "params": {"K": 4}}},
           "search": {"objectives": [{"metric": "dev/macro_f1", "direction": "max"}]}}
    data = prepare(build_spec(raw, "g").dataset)
    with tempfile.TemporaryDirectory() as d:
        final = run_trial(raw, {}, data, LocalSession(d))
    assert "test/tpr_gap/gender" in final and final["groups/min_cluster_train"] > 0


def test_group_sources_declare_the_arrays_they_read():
    from fairray.data.groups import AUX_EXTRACTORS, needs

    assert needs("attribute") == () and needs("kmeans") == needs("pseudo") == ("speaker_emb",)
    assert set(needs("kmeans")) <= set(AUX_EXTRACTORS)


# -- pseudo_hf: pseudo-labels from a pretrained gender model's cached probabilities ------------------------------

def _hf_input(prob, attr, corpus, attr_values=("F", "M")):
    meta = pd.DataFrame({"corpus": corpus})
    return GroupInput(meta, np.asarray(attr), attr_values, np.array(["train"] * len(attr), dtype=object),
                      {"gender_prob": np.asarray(prob, dtype=np.float32)})


def test_pseudo_hf_ids_prob_and_accuracy_per_corpus():
    prob = [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]]  # columns F, M (sorted mapped values)
    attr = [0, 1, 1, 1, -1]
    corpus = ["a", "a", "b", "b", "b"]
    g = GROUP_SOURCES.get("pseudo_hf")(_hf_input(prob, attr, corpus), {"model_path": "unused"})
    assert g.ids.tolist() == [0, 1, 0, 1, 0] and g.values == ("F", "M")
    np.testing.assert_array_equal(g.prob, np.asarray(prob, dtype=np.float32))
    assert g.info == {"pseudo_acc/a": 1.0, "pseudo_acc/b": 0.5, "pseudo_acc": 0.75}  # the unknown row is not scored
    # attribute values in another order, and one no label maps to (probability 0)
    g = GROUP_SOURCES.get("pseudo_hf")(_hf_input(prob, [2, 0, 0, 0, 1], corpus, ("M", "U2", "F")),
                                       {"label_map": {"male": "M", "female": "F"}})
    np.testing.assert_array_equal(g.prob, np.asarray(prob, dtype=np.float32)[:, [1, 1, 0]] * [1, 0, 1])
    assert g.ids.tolist() == [2, 0, 2, 0, 2] and g.values == ("M", "U2", "F")


def test_pseudo_hf_errors_are_one_line(tmp_path):
    inp = _hf_input([[0.5, 0.5]], [0], ["a"])
    with pytest.raises(ConfigError, match=r"label_map maps 'female' to 'W', which is not a value of the protected "
                                          r"attribute \(its values: F, M\)"):
        GROUP_SOURCES.get("pseudo_hf")(inp, {"label_map": {"female": "W", "male": "M"}})
    with pytest.raises(ConfigError, match=r"group source 'pseudo_hf': unknown parameter\(s\) \['path'\]"):
        GROUP_SOURCES.get("pseudo_hf")(inp, {"path": "/models/ag"})
    from fairray.data.groups import infer_groups

    for _ in range(2):  # through the cache: the error is raised each time, no entry and no lock are left behind
        with pytest.raises(ConfigError, match="maps 'female' to 'W'"):
            infer_groups("pseudo_hf", {"label_map": {"female": "W", "male": "M"}}, inp, cache_root=tmp_path)
    assert not [p for p in (tmp_path / "groups").rglob("*") if p.is_file()]
    with pytest.raises(DataError, match=r"shape \(1, 2\); expected \(1, 3\)"):
        GROUP_SOURCES.get("pseudo_hf")(_hf_input([[0.5, 0.5]], [0], ["a"], ("F", "M", "X")),
                                       {"label_map": {"female": "F", "male": "M", "child": "X"}})


def test_pseudo_hf_on_the_builtin_dataset_is_a_one_line_error():
    from fairray.config import DatasetConfig, NamedParams
    from fairray.data import prepare

    with pytest.raises(DataError) as err:
        prepare(DatasetConfig(groups=NamedParams("pseudo_hf", {"model_path": "/models/age-gender"})))
    assert "\n" not in str(err.value) and "'gender_prob': 'hf_voice_gender'} computed from audio" in str(err.value)
    assert "dataset.name: corpora" in str(err.value)
    # a loader that provides no probabilities reaches the source's own guard
    inp = _hf_input([[0.5, 0.5]], [0], ["a"], ("F", "M"))
    inp = GroupInput(inp.meta, inp.attr, inp.attr_values, inp.split, {})
    with pytest.raises(DataError, match="ser3 ships no audio"):
        GROUP_SOURCES.get("pseudo_hf")(inp, {"model_path": "/models/age-gender"})


def test_sources_give_the_extractors_of_their_arrays_with_parameters():
    from fairray.data.groups import aux_extractors

    assert aux_extractors("attribute", {}) == {}
    assert aux_extractors("kmeans", {"K": 4}) == {"speaker_emb": ("resemblyzer", {})}
    specs = aux_extractors("pseudo_hf", {"model_path": "/m", "architecture": "auto",
                                         "label_map": {"Female": "F", "Male": "M"}})
    assert specs == {"gender_prob": ("hf_voice_gender", {"model_path": "/m", "architecture": "auto",
                                                         "label_map": {"Female": "F", "Male": "M"},
                                                         "batch_size": 8, "device": "auto"})}
    from fairray.data.features import make_extractor

    name, params = specs["gender_prob"]
    assert make_extractor(name, **params).columns == ("F", "M")
    with pytest.raises(ConfigError, match="unknown parameter"):
        aux_extractors("pseudo_hf", {"K": 2})


# -- group inference once per (data, parameters): the result cache -----------------------------------------------

def _km_input(seed=0, n=60):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    split = np.array(["train", "dev", "test"] * (n // 3), dtype=object)
    meta = pd.DataFrame({"corpus": ["c"] * n, "speaker": [f"s{i % 7}" for i in range(n)]})
    return GroupInput(meta, np.tile([0, 1], n // 2), ("F", "M"), split, {"speaker_emb": emb,
                                                                         "unrelated": np.zeros(n)})


@pytest.fixture
def counted(monkeypatch):
    """Wrap registered sources so each real computation is counted (and its input recorded)."""
    calls: list[tuple[str, GroupInput]] = []

    def wrap(name):
        source = GROUP_SOURCES.get(name)

        def run(inp, params):
            calls.append((name, inp))
            return source(inp, params)

        run.__dict__.update(source.__dict__)
        monkeypatch.setitem(GROUP_SOURCES._items, name, run)

    for name in ("kmeans", "pseudo", "attribute"):
        wrap(name)
    return calls


def _same(a, b, recomputed=False):
    """``a`` equals ``b``: bit for bit when one is read from the cache, to float rounding when both were computed."""
    assert a.values == b.values and a.info == b.info
    for x, y, exact in ((a.ids, b.ids, True), (a.prob, b.prob, not recomputed)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_group_inference_is_computed_once_and_read_back_exactly(tmp_path, counted):
    from fairray.data.groups import infer_groups

    inp = _km_input()
    fresh = infer_groups("kmeans", {"K": 3}, inp, cache_root=tmp_path)
    assert len(counted) == 1
    assert list(counted[0][1].meta.columns) == [] and set(counted[0][1].aux) == {"speaker_emb"}  # declared only
    cached = infer_groups("kmeans", {"K": 3}, inp, cache_root=tmp_path)
    assert len(counted) == 1
    _same(cached, fresh)
    _same(cached, GROUP_SOURCES.get("kmeans")(inp, {"K": 3}), recomputed=True)  # and a computation without the cache
    counted.clear()
    assert len(list((tmp_path / "groups" / "kmeans").glob("*.json"))) == 1
    infer_groups("kmeans", {"K": 3, "l2norm": True, "seed": 42}, inp, cache_root=tmp_path)  # defaults: same key
    assert len(counted) == 0
    # what the source does not read stays out of the key; what it reads is in it
    moved = GroupInput(inp.meta.assign(speaker="x"), inp.attr, inp.attr_values, inp.split,
                       {**inp.aux, "unrelated": np.ones(60)})
    infer_groups("kmeans", {"K": 3}, moved, cache_root=tmp_path)
    assert len(counted) == 0
    infer_groups("kmeans", {"K": 4}, inp, cache_root=tmp_path)
    assert len(counted) == 1
    split = inp.split.copy()
    split[0] = "dev"
    infer_groups("kmeans", {"K": 3}, GroupInput(inp.meta, inp.attr, inp.attr_values, split, inp.aux),
                 cache_root=tmp_path)
    assert len(counted) == 2
    emb = inp.aux["speaker_emb"].copy()
    emb[5, 2] += 1e-3
    infer_groups("kmeans", {"K": 3}, GroupInput(inp.meta, inp.attr, inp.attr_values, inp.split,
                                                {"speaker_emb": emb}), cache_root=tmp_path)
    assert len(counted) == 3
    assert len(list((tmp_path / "groups" / "kmeans").glob("*.json"))) == 4
    # no cache root: computed every time
    infer_groups("kmeans", {"K": 3}, inp)
    infer_groups("kmeans", {"K": 3}, inp)
    assert len(counted) == 5


def test_group_cache_keys():
    from fairray.data.features._result_cache import identity_key
    from fairray.data.groups import group_identity

    inp = _km_input()
    key = identity_key(group_identity("kmeans", {"K": 3}, inp))
    assert key == identity_key(group_identity("kmeans", {"K": 3, "temperature": 0.1}, inp))
    assert key != identity_key(group_identity("kmeans", {"K": 3, "temperature": 0.2}, inp))
    assert key != identity_key(group_identity("pseudo", {}, inp))
    attr = inp.attr.copy()
    attr[0] = 1 - attr[0]
    assert key != identity_key(group_identity("kmeans", {"K": 3}, GroupInput(inp.meta, attr, inp.attr_values,
                                                                             inp.split, inp.aux)))
    assert key != identity_key(group_identity("kmeans", {"K": 3}, GroupInput(inp.meta, inp.attr, ("M", "F"),
                                                                             inp.split, inp.aux)))
    # pseudo_hf: batch size and device do not change the groups; the model and the label map do
    hf = _hf_input([[0.5, 0.5]], [0], ["a"])
    base = identity_key(group_identity("pseudo_hf", {"model_path": "/m"}, hf))
    assert base == identity_key(group_identity("pseudo_hf", {"model_path": "/m", "batch_size": 2, "device": "cpu"},
                                               hf))
    assert base != identity_key(group_identity("pseudo_hf", {"model_path": "/m", "label_map": {"female": "F",
                                                                                               "male": "M",
                                                                                               "child": "F"}}, hf))
    assert base != identity_key(group_identity("pseudo_hf", {"model_path": "/other"}, hf))


@pytest.mark.parametrize("damage", ["truncate_data", "garble_record", "delete_data", "wrong_shape"])
def test_a_corrupt_group_entry_is_recomputed(tmp_path, counted, damage):
    import json

    from fairray.data.groups import infer_groups

    inp = _km_input()
    fresh = infer_groups("kmeans", {"K": 3}, inp, cache_root=tmp_path)
    folder = tmp_path / "groups" / "kmeans"
    (record,) = folder.glob("*.json")
    (data,) = folder.glob("*.npz")
    if damage == "truncate_data":
        data.write_bytes(data.read_bytes()[:-20])
    elif damage == "garble_record":
        record.write_text(record.read_text()[:40])
    elif damage == "delete_data":
        data.unlink()
    else:  # a record whose shapes disagree with the data it names (data rewritten, checksum updated)
        meta = json.loads(record.read_text())
        meta["arrays"]["prob"][0] = [60, 4]
        record.write_text(json.dumps(meta))
    again = infer_groups("kmeans", {"K": 3}, inp, cache_root=tmp_path)
    assert len(counted) == 2
    _same(again, fresh, recomputed=True)
    assert len(list(folder.glob("*.npz"))) == 1 and len(list(folder.glob("*.json"))) == 1
    assert not list(folder.glob("*.lock"))
    infer_groups("kmeans", {"K": 3}, inp, cache_root=tmp_path)
    assert len(counted) == 2


def test_concurrent_callers_compute_once(tmp_path):
    import threading
    import time

    from fairray.data.features._result_cache import ResultCache

    runs = []

    def compute():
        runs.append(1)
        time.sleep(0.3)
        return {"x": np.arange(4)}, {"note": "once"}

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        ResultCache(tmp_path).get_or_compute_result("t", {"k": 1}, compute))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1 and sorted(r.hit for r in results) == [False, True, True]
    assert all(r.record == {"note": "once"} and r.arrays["x"].tolist() == [0, 1, 2, 3] for r in results)


def test_prepare_caches_groups_under_the_dataset_cache(tmp_path, counted):
    from fairray.config import DatasetConfig, NamedParams
    from fairray.data import prepare

    cfg = DatasetConfig(groups=NamedParams("pseudo"), cache=str(tmp_path))
    first = prepare(cfg)
    assert [name for name, _ in counted] == ["pseudo"]
    assert list(counted[0][1].meta.columns) == ["corpus"]
    second = prepare(cfg)
    assert len(counted) == 1
    _same(Groups(second.group, second.group_values, second.group_prob, second.group_info),
          Groups(first.group, first.group_values, first.group_prob, first.group_info))
    assert list((tmp_path / "groups" / "pseudo").glob("*.json"))
    prepare(DatasetConfig(groups=NamedParams("pseudo")))  # no dataset.cache, no cache root: computed
    assert len(counted) == 2
    prepare(DatasetConfig(cache=str(tmp_path)))  # the true attribute is not stored
    assert len(counted) == 3 and not (tmp_path / "groups" / "attribute").exists()


def test_kmeans_embedder_picks_the_speaker_model_it_reads():
    from fairray.data.groups import aux_extractors

    assert aux_extractors("kmeans", {}) == {"speaker_emb": ("resemblyzer", {})}
    assert aux_extractors("kmeans", {"embedder": "ecapa", "embedder_params": {"model_path": "/m"}}) == {
        "speaker_emb": ("ecapa", {"model_path": "/m"})}
    from fairray.config import DatasetConfig, NamedParams
    from fairray.data import prepare
    from fairray.errors import DataError

    with pytest.raises(DataError, match=r"needs \{'speaker_emb': 'ecapa'\} computed from audio"):
        prepare(DatasetConfig(groups=NamedParams("kmeans", {"embedder": "ecapa"})))
