"""A conditional search and a declared ablation grid of search_spaces/idi.yaml, end to end with real Ray
Tune, real Optuna and a real MLflow store: every trial gets the dataset variant its parameters ask for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "idi.yaml"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("idi")
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=6, max_concurrent=2, max_failures=0)
    raw["search"]["sampler"] = "random"
    raw["storage"]["path"] = str(tmp / "runs")
    raw["ablations"]["small"] = {"seeds": [0], "cells": [
        {"method.name": ["erm"]},
        {"method.name": ["gdro"], "dataset.groups.name": ["attribute", "pseudo", "kmeans"]},
        {"method.name": ["rw"], "dataset.groups.name": ["kmeans"], "dataset.groups.params.K": [2]},
    ]}
    path = tmp / "idi.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _trials(spec: Path, ablation: str | None):
    uri = f"sqlite:///{spec.parent / 'runs' / 'mlflow.db'}"
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("idi").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fairray.kind") == "sweep"
               and r.data.tags.get("fairray.ablation") == ablation]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_ablation_runs_each_declared_point_on_its_own_dataset_variant(spec, capsys):
    assert main(["sweep", str(spec), "--ablation", "small", "--quiet"]) == 0
    capsys.readouterr()
    trials = _trials(spec, "small")
    assert all(r.info.status == "FINISHED" for r in trials)
    got = sorted((r.data.params["method.name"], r.data.params["dataset.groups.name"],
                  r.data.params.get("dataset.groups.params.K", "")) for r in trials)
    assert got == [("erm", "attribute", ""), ("gdro", "attribute", ""), ("gdro", "kmeans", ""),
                   ("gdro", "pseudo", ""), ("rw", "kmeans", "2")]
    for r in trials:  # the group source's diagnostics prove which prepared data the trial trained on
        source = r.data.params["dataset.groups.name"]
        assert ("groups/pseudo_acc" in r.data.metrics) == (source == "pseudo")
        assert ("groups/max_cluster_train" in r.data.metrics) == (source == "kmeans")
        if source == "pseudo":
            assert 0.5 < r.data.metrics["groups/pseudo_acc"] <= 1.0
    # the frontier reads the ablation's run, not the search's
    assert main(["frontier", str(spec), "--ablation", "small", "--format", "csv", "--all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("all,")]
    assert len(rows) == 2 * len(trials)  # one row per trial and objective
    assert main(["frontier", str(spec)]) != 0  # no search has run yet
    assert "holds no fairray sweep run (besides ablations)" in capsys.readouterr().err


def test_conditional_search_samples_parameters_only_where_they_apply(spec):
    assert main(["sweep", str(spec), "--quiet"]) == 0
    trials = _trials(spec, None)
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    group_methods = {"rw", "ds", "gdro", "gadro", "pgdro"}
    for r in trials:
        p = r.data.params
        searched = set(yaml.safe_load(r.data.tags["fairray.searched_params"]))
        method = p["method.name"]
        assert ("dataset.groups.name" in searched) == (method in group_methods)
        assert ("method.eta_q" in searched) == (method in {"gdro", "gadro", "pgdro"})
        assert ("method.lambda_dis" in searched) == (method == "disent")
        assert ("dataset.groups.params.K" in searched) == (p["dataset.groups.name"] == "kmeans"
                                                           and "dataset.groups.name" in searched)


def test_report_and_noise_marks_read_the_logged_predictions(spec, capsys):
    """`fairray report` / `frontier --noise` on the ablation: numbers recomputed from the trials' prediction
    artifacts equal the metrics the trials logged."""
    if not _has_run(spec, "small"):
        assert main(["sweep", str(spec), "--ablation", "small", "--quiet"]) == 0
    trials = _trials(spec, "small")
    out = spec.parent / "report"
    capsys.readouterr()
    assert main(["report", str(spec), "--ablation", "small", "--n-boot", "20", "--out", str(out)]) == 0
    md = (out / "idi-small.md").read_text()
    assert md.strip() in capsys.readouterr().out  # the printed report is the file's
    erm = [r for r in trials if r.data.params["method.name"] == "erm"]
    row = next(line for line in md.splitlines() if line.startswith("| ERM |"))
    f1 = float(row.split("|")[4].split()[0])
    assert f1 == pytest.approx(sum(r.data.metrics["test/macro_f1"] for r in erm) / len(erm), abs=5e-4)
    assert "| Random |" in md and (out / "idi-small.svg").read_text().startswith("<svg")
    assert main(["frontier", str(spec), "--ablation", "small", "--noise", "--n-boot", "20"]) == 0
    assert "95% CI" in capsys.readouterr().out


def _has_run(spec: Path, ablation: str) -> bool:
    try:
        _trials(spec, ablation)
    except (AssertionError, AttributeError):
        return False
    return True


def test_group_variants_share_one_copy_of_the_features():
    """DataVariants: variants that differ only in dataset.groups hold one dataset in the object store and
    patch in their groups; each selected variant equals a direct prepare() of its own dataset section."""
    import ray

    from fairray.config import load_spec, resolve_trial
    from fairray.data import prepare
    from fairray.sweep.runner import DataVariants, dataset_assignments

    loaded = load_spec(SPEC)
    assignments = dataset_assignments(loaded.spec, None)
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        variants = DataVariants.prepare(loaded, assignments, verbose=False)
        refs = {id(ref) if not hasattr(ref, "hex") else ref.hex() for ref, _ in variants.items.values()}
        assert len(variants.items) == 7 and len(refs) == 1  # attribute, pseudo, kmeans x 5: one feature copy
        for a in assignments:
            got = variants.select(a)
            want = prepare(resolve_trial(loaded.raw, a).spec.dataset)
            assert got.fingerprint == want.fingerprint and got.group_values == want.group_values
            np.testing.assert_array_equal(got.group, want.group)
            np.testing.assert_allclose(got.group_prob, want.group_prob, rtol=1e-6, atol=1e-7)  # computed twice
            np.testing.assert_array_equal(got.X, want.X)
            assert got.group_info == want.group_info
    finally:
        ray.shutdown()
