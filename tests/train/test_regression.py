"""Regression: short trials of every method of minmaxgap.yaml and idi.yaml still give the final metrics frozen
in ``golden_metrics.json`` (see ``make_golden.py`` for how and from which commit it was produced).

Not bit-exact: metrics in [0, 1] within 2e-3 absolute (below one flipped prediction of the ~270-600 clip
splits), losses and the methods' own per-epoch logs within 1e-3 relative, counts and the selected epoch exact.
A failure means the code computes different results than the golden commit did; only regenerate the golden
file when that change of results is intended.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("fairray_tests_make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_generator()
GOLDEN = json.loads(make_golden.GOLDEN.read_text())

ABS_UNIT = 2e-3  # metrics in [0, 1]
REL_LOSS = 1e-3  # losses, the methods' logs (λ, per-language dev gaps in loss units ...)
_EXACT = re.compile(r"^(selected_epoch|(dev|test)/n(_excluded)?(/.*)?|groups/(min|max)_cluster.*)$")
_RELATIVE = re.compile(r"(^|/)loss$|^method/")


def _close(key: str, got: float, want: float | None) -> bool:
    if want is None:  # NaN in the golden run (e.g. a gender absent from a language's dev split)
        return got is None or math.isnan(got)
    if got is None or math.isnan(got):
        return False
    if _EXACT.match(key):
        return got == want
    if _RELATIVE.search(key):
        return math.isclose(got, want, rel_tol=REL_LOSS, abs_tol=1e-6)
    return abs(got - want) <= ABS_UNIT


#: Defaults changed on purpose since the golden commit, and the values that select the old behaviour: the
#: golden numbers must still come out with them (the refactor changed nothing else). DisEnt's swap_start
#: now counts optimiser steps (METHODS 3.9: "first step with swapping"); it used to round to an epoch.
SINCE_GOLDEN = {"idi_disent": {"method.swap_unit": "epochs"}}


@pytest.fixture(scope="module")
def data_cache():
    return {}  # prepared datasets shared by the configurations with the same resolved dataset section


@pytest.mark.parametrize("name", sorted(GOLDEN["configs"]))
def test_trial_metrics_match_the_golden_commit(name, data_cache):
    golden = GOLDEN["configs"][name]
    got = make_golden.run_config(golden["spec"], {**golden["params"], **SINCE_GOLDEN.get(name, {})}, data_cache)
    problems = []
    for key, want in golden["metrics"].items():
        value = got["metrics"].get(key, "missing")
        if value == "missing":
            problems.append(f"{key}: missing (golden {want})")
        elif not _close(key, value, want):
            problems.append(f"{key}: {value} (golden {want})")
    if len(got["epochs"]) != len(golden["epochs"]):
        problems.append(f"{len(got['epochs'])} epoch reports (golden {len(golden['epochs'])})")
    for epoch, (have, want) in enumerate(zip(got["epochs"], golden["epochs"], strict=False)):
        for key, value in want.items():
            if key not in have:
                problems.append(f"epoch {epoch} {key}: missing (golden {value})")
            elif not _close(key, have[key], value):
                problems.append(f"epoch {epoch} {key}: {have[key]} (golden {value})")
    if problems:
        note = ""
        if make_golden.spec_digest(golden["spec"]) != golden["spec_sha256"]:
            note = f"\nnote: search_spaces/{golden['spec']} changed since the golden commit"
        pytest.fail(f"{name} ({golden['spec']}, params {golden['params']}) differs from commit "
                    f"{GOLDEN['commit'][:7]}:\n  " + "\n  ".join(problems) + note)
