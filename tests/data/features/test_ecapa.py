"""ecapa on a tiny, randomly initialised ECAPA-TDNN saved in the folder layout of speechbrain/spkrec-ecapa-voxceleb.

The real checkpoint cannot be downloaded here, so the fixture writes what that Hub folder holds, at toy size:
``hyperparams.yaml`` with the published file's structure (including ``pretrained_path`` still naming the Hub
repository), ``embedding_model.ckpt`` (the 200-tensor state_dict layout: parameters and BatchNorm running
statistics, no ``num_batches_tracked``), ``mean_var_norm_emb.ckpt``, ``classifier.ckpt`` and ``label_encoder.txt``.
The folder is made read-only: loading must neither write into it nor reach the network.
"""

from __future__ import annotations

import pickle
import shutil
import stat

import numpy as np
import pandas as pd
import pytest

from fairray.data.features import FeatureCache, make_extractor
from fairray.data.features.speaker import ECAPA
from fairray.errors import DataError

#: The published hyperparams.yaml of speechbrain/spkrec-ecapa-voxceleb with the sizes made small
#: (real: channels [1024, 1024, 1024, 1024, 3072], attention_channels 128, out_n_neurons 7205).
HYPERPARAMS = """\
# ############################################################################
# Model: ECAPA big for Speaker verification
# ############################################################################

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: {n_speakers}

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 16
    lin_neurons: {lin_neurons}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin_neurons}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder


pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""
CHANNELS = [32, 32, 32, 32, 96]
FILES = ["classifier.ckpt", "embedding_model.ckpt", "hyperparams.yaml", "label_encoder.txt", "mean_var_norm_emb.ckpt"]


def write_tiny_ecapa(folder, *, lin_neurons: int = 192, channels=CHANNELS, seed: int = 0, n_speakers: int = 4):
    """Write a random ECAPA-TDNN checkpoint folder in the layout of speechbrain/spkrec-ecapa-voxceleb."""
    import torch
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ECAPA_TDNN(80, channels=list(channels), kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1],
                       attention_channels=16, lin_neurons=lin_neurons)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, folder / "embedding_model.ckpt")
    torch.save(Classifier(lin_neurons, out_neurons=n_speakers).state_dict(), folder / "classifier.ckpt")
    torch.save({"count": 1000, "glob_mean": 0.1 * torch.randn(lin_neurons), "glob_std": torch.ones(lin_neurons),
                "spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}}, folder / "mean_var_norm_emb.ckpt")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"id1{i:04d}" for i in range(1, n_speakers + 1)])
    encoder.save(folder / "label_encoder.txt")
    (folder / "hyperparams.yaml").write_text(HYPERPARAMS.format(n_speakers=n_speakers, channels=list(channels),
                                                                lin_neurons=lin_neurons))
    return folder


def _read_only(folder) -> None:
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)


def _writable(folder) -> None:
    folder.chmod(stat.S_IRWXU)
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.fixture(scope="module")
def tiny_ecapa(tmp_path_factory):
    """The 192-d tiny checkpoint, read-only while the tests run."""
    folder = write_tiny_ecapa(tmp_path_factory.mktemp("ecapa") / "spkrec-ecapa-voxceleb")
    _read_only(folder)
    yield folder
    _writable(folder)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to fetch from the Hub or a URL fails the test."""
    from speechbrain.utils import fetching

    def refuse(*args, **kwargs):
        raise AssertionError(f"network fetch attempted: {args} {kwargs}")

    monkeypatch.setattr(fetching.huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(fetching, "download_file", refuse)


def _ecapa(folder, **params) -> ECAPA:
    return make_extractor("ecapa", model_path=str(folder), device="cpu", **params)


@pytest.fixture(scope="module")
def real_clips(corpora) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Six real clips of different lengths: three RAVDESS, three EmoDB."""
    from fairray.data.audio import load_audio
    from fairray.data.corpora import CORPORA

    tables = []
    for name in ("ravdess", "emodb"):
        table = CORPORA.get("manifest")().load(corpora / name).iloc[::97].head(3)
        tables.append(table.assign(path=[f"{name}/{p}" for p in table["path"]]))
    table = pd.concat(tables, ignore_index=True)
    return table, [load_audio(corpora / p) for p in table["path"]]


@pytest.fixture(scope="module")
def items(real_clips) -> list[np.ndarray]:
    """The real clips (the EmoDB ones are all 2 s long), plus trimmed copies that share a batch: two of one clip
    within one hop of each other's length (same Fbank frame count), two different clips cut to one length."""
    _, clips = real_clips
    n = 160 * 200 + 100
    return [*clips, clips[0][:n], clips[0][:n - 37], clips[1][:n + 500], clips[4][:n + 500]]


def _card_embeddings(folder, tmp_path, clips) -> np.ndarray:
    """The model card's usage, one clip at a time: a writable copy whose pretrained_path names the copy."""
    import torch
    from speechbrain.inference.speaker import EncoderClassifier

    copy = tmp_path / "card"
    shutil.copytree(folder, copy)
    _writable(copy)
    yaml = (copy / "hyperparams.yaml").read_text()
    (copy / "hyperparams.yaml").write_text(yaml.replace("pretrained_path: speechbrain/spkrec-ecapa-voxceleb",
                                                        f"pretrained_path: {copy}"))
    card = EncoderClassifier.from_hparams(source=str(copy), savedir=str(copy), run_opts={"device": "cpu"})
    with torch.no_grad():
        return np.concatenate([card.encode_batch(torch.from_numpy(x)[None]).squeeze(1).numpy() for x in clips])


@pytest.mark.corpora
def test_real_clips_batched_equal_one_at_a_time_and_the_model_card(tiny_ecapa, items, tmp_path, monkeypatch):
    from speechbrain.inference.speaker import EncoderClassifier

    extractor = _ecapa(tiny_ecapa, batch_size=4)
    assert extractor.dim == 192 and extractor._model is None  # read from the checkpoint, nothing loaded
    sizes = []
    encode = EncoderClassifier.encode_batch
    monkeypatch.setattr(EncoderClassifier, "encode_batch",
                        lambda self, wavs, *a, **k: sizes.append(len(wavs)) or encode(self, wavs, *a, **k))
    X = extractor.extract(items)
    assert X.shape == (len(items), 192) and X.dtype == np.float32 and np.isfinite(X).all()
    assert max(sizes) > 1 and len(sizes) < len(items) and sum(sizes) == len(items)  # equal buckets shared batches
    alone = np.concatenate([_ecapa(tiny_ecapa, batch_size=1).extract([x]) for x in items])
    np.testing.assert_allclose(X, alone, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(X, _card_embeddings(tiny_ecapa, tmp_path, items), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(extractor.extract(items), X, atol=1e-6)  # deterministic
    assert len({tuple(np.round(row, 4)) for row in X[:6]}) == 6  # the six real clips, six embeddings
    assert sorted(p.name for p in tiny_ecapa.iterdir()) == FILES  # nothing written into the model folder


@pytest.mark.corpora
def test_padding_to_the_longest_clip_would_change_the_rows(tiny_ecapa, real_clips):
    """Why clips are batched only within one hop of length: SpeechBrain's padded batch with relative lengths
    masks the pooling, but the convolutions of a shorter clip see the padding at its end."""
    import torch

    _, clips = real_clips
    extractor = _ecapa(tiny_ecapa).load()
    model = extractor._model[0]
    longest = max(len(x) for x in clips)
    wavs = torch.zeros(len(clips), longest)
    for i, x in enumerate(clips):
        wavs[i, :len(x)] = torch.from_numpy(x)
    with torch.no_grad():
        padded = model.encode_batch(wavs, torch.tensor([len(x) / longest for x in clips])).squeeze(1).numpy()
    gap = np.abs(padded - extractor.extract(clips)).max()
    assert gap > 1e-4, gap


def test_extractor_contract_on_synthetic_clips(tiny_ecapa, clips, tone):
    extractor = _ecapa(tiny_ecapa, batch_size=2)
    X = extractor.extract(clips)
    assert X.shape == (3, 192) and X.dtype == np.float32 and np.isfinite(X).all()
    assert not np.allclose(X[0], X[1])
    assert extractor.extract([]).shape == (0, 192)
    clone = pickle.loads(pickle.dumps(extractor))  # shipped to workers (Ray tasks) without weights
    assert clone._model is None and clone.params == extractor.params
    np.testing.assert_allclose(clone.extract(clips[:1]), X[:1], atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="extractor 'ecapa': item 0"):
        extractor.extract(["not audio"])
    assert extractor.key_params() == {"model_path": str(tiny_ecapa)}  # batch size and device stay out of the key


def test_dim_follows_the_checkpoint(tmp_path, clips):
    folder = write_tiny_ecapa(tmp_path / "narrow", lin_neurons=48, channels=[16, 16, 16, 16, 48], seed=1)
    extractor = _ecapa(folder)
    assert extractor.dim == 48 and extractor._model is None
    assert extractor.extract(clips).shape == (3, 48) and extractor.dim == 48
    assert extractor.extract([]).shape == (0, 48)


@pytest.mark.corpora
def test_feature_cache_runs_the_model_once(tiny_ecapa, real_clips, corpora, tmp_path, monkeypatch):
    table, clips = real_clips
    expected = _ecapa(tiny_ecapa).extract(clips)
    calls = []
    extract = ECAPA._extract
    monkeypatch.setattr(ECAPA, "_extract", lambda self, batch: calls.append(len(batch)) or extract(self, batch))
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute(table, corpora, _ecapa(tiny_ecapa), progress=False)
    assert not first.hit and sum(calls) == 6 and first.X.shape == (6, 192)
    np.testing.assert_allclose(first.X, expected, atol=1e-5, rtol=1e-5)
    second = cache.get_or_compute(table, corpora, _ecapa(tiny_ecapa, batch_size=2), progress=False)
    assert second.hit and second.key == first.key and sum(calls) == 6
    np.testing.assert_array_equal(second.X, first.X)


def test_fingerprint_follows_the_checkpoint(tiny_ecapa, tmp_path):
    import torch

    copy = tmp_path / "copy"
    shutil.copytree(tiny_ecapa, copy)
    _writable(copy)
    assert _ecapa(copy).fingerprint() == _ecapa(tiny_ecapa).fingerprint()
    assert set(_ecapa(copy).fingerprint()) == {"weights", "speechbrain"}
    state = torch.load(copy / "embedding_model.ckpt", weights_only=True)
    state["fc.conv.bias"] = state["fc.conv.bias"] + 1.0
    torch.save(state, copy / "embedding_model.ckpt")
    assert _ecapa(copy).fingerprint() != _ecapa(tiny_ecapa).fingerprint()


def test_environment_variable_names_the_folder(tiny_ecapa, monkeypatch, clips):
    monkeypatch.setenv("FAIRRAY_ECAPA_PATH", str(tiny_ecapa))
    assert make_extractor("ecapa", device="cpu").extract(clips[:1]).shape == (1, 192)


def test_a_yaml_without_pretrained_path_loads_too(tmp_path, clips, tiny_ecapa):
    folder = write_tiny_ecapa(tmp_path / "absolute")
    yaml = (folder / "hyperparams.yaml").read_text().replace("pretrained_path: speechbrain/spkrec-ecapa-voxceleb\n", "")
    (folder / "hyperparams.yaml").write_text(yaml.replace("!ref <pretrained_path>", str(folder)))
    assert "pretrained_path" not in (folder / "hyperparams.yaml").read_text()
    np.testing.assert_allclose(_ecapa(folder).extract(clips), _ecapa(tiny_ecapa).extract(clips), atol=1e-6)


def test_published_yaml_alone_would_fetch_from_the_hub(tiny_ecapa):
    """Without the pretrained_path override SpeechBrain sends the checkpoint paths to the Hub repository."""
    from speechbrain.inference.speaker import EncoderClassifier

    with pytest.raises(AssertionError, match="network fetch attempted"):
        EncoderClassifier.from_hparams(source=str(tiny_ecapa), savedir=None)


def _one_line_error(folder, clips, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        _ecapa(folder).extract(clips)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_or_incomplete_folders_are_one_line(tmp_path, clips):
    _one_line_error(tmp_path / "missing", clips, r"ecapa: model folder .*missing does not exist")
    no_weights = write_tiny_ecapa(tmp_path / "no_weights")
    (no_weights / "embedding_model.ckpt").unlink()
    message = _one_line_error(no_weights, clips, r"lacks \['embedding_model.ckpt'\]")
    assert "spkrec-ecapa-voxceleb" in message
    no_classifier = write_tiny_ecapa(tmp_path / "no_classifier")
    (no_classifier / "classifier.ckpt").unlink()
    _one_line_error(no_classifier, clips, r"ecapa: cannot load .*no_classifier \(FileNotFoundError: .*classifier.ckpt")


def test_checkpoints_that_do_not_fit_are_one_line(tmp_path, clips):
    import torch

    other = write_tiny_ecapa(tmp_path / "other_arch")  # hyperparams.yaml builds wider layers than the checkpoint holds
    (other / "hyperparams.yaml").write_text((other / "hyperparams.yaml").read_text()
                                            .replace(str(CHANNELS), "[64, 64, 64, 64, 192]"))
    _one_line_error(other, clips, r"ecapa: cannot load .*other_arch \(RuntimeError: Error\(s\) in loading state_dict")
    partial = write_tiny_ecapa(tmp_path / "partial")  # SpeechBrain alone would only log a warning and keep random layers
    state = torch.load(partial / "embedding_model.ckpt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.3.")}, partial / "embedding_model.ckpt")
    _one_line_error(partial, clips, r"embedding_model.ckpt lacks \d+ weight\(s\) of the embedding_model .*blocks\.3\.")
    foreign = write_tiny_ecapa(tmp_path / "foreign")
    torch.save({"weight": torch.zeros(3)}, foreign / "embedding_model.ckpt")
    _one_line_error(foreign, clips, r"is not an ECAPA-TDNN state_dict \(no 'fc.conv.weight'\)")
    with pytest.raises(DataError, match="is not an ECAPA-TDNN state_dict"):
        _ecapa(foreign).dim  # noqa: B018
    garbage = write_tiny_ecapa(tmp_path / "garbage")
    (garbage / "embedding_model.ckpt").write_bytes(b"not a checkpoint")
    _one_line_error(garbage, clips, r"ecapa: cannot read .*garbage/embedding_model.ckpt")


@pytest.mark.corpora
def test_kmeans_groups_from_ecapa_embeddings_of_real_clips(tiny_ecapa, corpora, tmp_path):
    """`dataset.groups: {name: kmeans, params: {embedder: ecapa}}` (IDI's ○ setting): the embeddings come from
    the ECAPA extractor through the feature cache, and the clusters are fitted on them."""
    import pandas as pd

    from fairray.config import CorpusSource, DatasetConfig, NamedParams
    from fairray.data import prepare
    from fairray.data.features import FeatureCache, make_extractor

    sources = []
    for name in ("ravdess", "emodb"):  # 3 F + 3 M speakers x (anger, neutral) per corpus, audio symlinked
        manifest = pd.read_csv(corpora / name / "manifest.csv", dtype=str, keep_default_na=False)
        manifest = manifest[manifest["emotion"].isin(["anger", "neutral"])]
        speakers = manifest.drop_duplicates("speaker").groupby("gender").head(3)["speaker"]
        manifest = manifest[manifest["speaker"].isin(speakers)].groupby(["speaker", "emotion"]).head(1)
        dst = tmp_path / "corpora" / name
        dst.mkdir(parents=True)
        manifest.to_csv(dst / "manifest.csv", index=False)
        for rel in manifest["path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(corpora / name / rel)
        sources.append(CorpusSource("manifest", str(dst)))
    embedder = {"model_path": str(tiny_ecapa), "device": "cpu"}
    cfg = DatasetConfig(name="corpora", corpora=tuple(sources), emotions=("anger", "neutral"), languages=("en", "de"),
                        cache=str(tmp_path / "cache"),
                        groups=NamedParams("kmeans", {"K": 2, "embedder": "ecapa", "embedder_params": embedder}))
    data = prepare(cfg)
    assert data.group_values == ("km0", "km1") and data.group.shape == (24,) and set(data.group) <= {0, 1}
    # the clusters were fitted on the cached ECAPA embeddings, row for row
    from sklearn.cluster import MiniBatchKMeans

    cache = FeatureCache(str(tmp_path / "cache"))
    from fairray.data.corpora import CORPORA

    emb = []
    for source in sources:
        table = CORPORA.get("manifest")().load(source.root)
        cached = cache.get_or_compute(table, source.root, make_extractor("ecapa", **embedder), progress=False)
        assert cached.hit
        by_uid = dict(zip(cached.uids, np.asarray(cached.X), strict=True))
        emb += [by_uid[u] for u in data.meta.loc[data.meta["corpus"] == table["corpus"].iloc[0], "uid"]]
    emb = np.stack(emb)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    train = data.split == "train"
    km = MiniBatchKMeans(n_clusters=2, init="k-means++", max_iter=1000, batch_size=32, reassignment_ratio=0.01,
                         random_state=42, n_init=3).fit(emb[train])
    assert np.array_equal(km.predict(emb), data.group)
