"""One real tiny sweep shared by the dashboard tests: real Ray Tune + Optuna + MLflow on the built-in data.

The minmaxgap spec with 2 epochs and a declared ablation ``tiny`` (ERM and MinMaxGAP, one seed: 2 trials),
run through ``fairray sweep SPEC --ablation tiny`` so that the runs' descriptions are written as a user's
sweep writes them. One sweep only (Ray trials cost about 30 s each here): the dashboard of an ablation run
has every part of a search's page, and its ablation table is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fairray.cli import main

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


@dataclass(frozen=True)
class TinySweep:
    spec: Path
    uri: str
    experiment: str
    ablation: str = "tiny"


@pytest.fixture(scope="package")
def tiny_sweep(tmp_path_factory) -> TinySweep:
    tmp = tmp_path_factory.mktemp("dashboard")
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
    raw["search"]["sampler"] = "random"
    raw["storage"]["path"] = str(tmp / "runs")
    raw["ablations"] = {"tiny": {"seeds": [0], "cells": [{"method.name": ["erm", "minmaxgap"]}]}}
    spec = tmp / "minmaxgap.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(spec), "--ablation", "tiny", "--quiet"]) == 0
    return TinySweep(spec, f"sqlite:///{tmp / 'runs' / 'mlflow.db'}", "minmaxgap")
