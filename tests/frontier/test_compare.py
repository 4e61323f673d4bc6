"""``fairray frontier --compare``: two sweeps in a real MLflow store (runs written as the sweep writes them, no
Ray), their fronts side by side with hypervolume, IGD+ against the joint front and the best DTO, by hand."""

from __future__ import annotations

import json
import math

import pytest

from fairray.cli import main
from fairray.tracking import TrialRun, ensure_experiment, start_sweep_run

UTIL, GAP = "dev/weighted_f1", "dev/tpr_gap/gender/worst:language"
OBJECTIVES = [(UTIL, "max"), (GAP, "min")]
SWEEPS = {
    "alpha": {"t0": (0.70, 0.20), "t1": (0.60, 0.10), "t2": (0.50, 0.30)},  # t2 dominated by t1
    "beta": {"t0": (0.80, 0.25), "t1": (0.55, 0.05)},
}
# joint front: alpha t0 (0.70, 0.20), alpha t1 (0.60, 0.10), beta t0 (0.80, 0.25), beta t1 (0.55, 0.05)
# IGD+ (minimisation: d+ = |max(a - z, 0)|) of alpha: z = beta t0 -> min(alpha t0: (0.10, 0) = 0.10, ...) = 0.10;
# z = beta t1 -> alpha t1: (0, 0.05) = 0.05 (its F1 0.60 beats 0.55; alpha t0: (0, 0.15)); its own points: 0
#   -> (0.10 + 0.05) / 4
# IGD+ of beta: z = alpha t0 -> beta t0: (0, 0.05) = 0.05; z = alpha t1 -> beta t1: (0.05, 0) = 0.05 -> 0.10 / 4
IGD_ALPHA = (0.10 + 0.05) / 4
IGD_BETA = 0.10 / 4
HV_ALPHA = 0.7 * 0.8 + 0.6 * 0.1  # reference (0, 1): F1 up to 0.7 above gap 0.2, up to 0.6 from gap 0.1 to 0.2
HV_BETA = 0.8 * 0.75 + 0.55 * 0.20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_ids = {}
    for name, points in SWEEPS.items():
        experiment_id = ensure_experiment(uri, name, str(tmp))
        parent = start_sweep_run(uri, experiment_id, name, str(tmp), {"method": {"name": "erm"}}, OBJECTIVES)
        for trial_id, (util, gap) in points.items():
            run = TrialRun.open(uri, experiment_id, parent.run_id, f"{name}_{trial_id}",
                                {"fairray.kind": "trial", "fairray.searched_params": '["train.lr"]'}, {"train.lr": "0.001"})
            run.log({UTIL: util, GAP: gap}, step=1)
            run.finish()
        run_ids[name] = parent.run_id
    return uri, run_ids


def test_compare_table(store, capsys):
    uri, _ = store
    assert main(["frontier", "--compare", "alpha", "beta", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    def row(label):
        return next(line for line in lines if line.strip().startswith(label)).split()[-2:]

    assert [float(v) for v in row("hypervolume")] == pytest.approx([HV_ALPHA, HV_BETA], abs=5e-5)
    assert [float(v) for v in row("IGD+ vs joint front")] == pytest.approx([IGD_ALPHA, IGD_BETA], abs=5e-5)
    assert row("non-dominated") == ["2", "2"] and row("trials") == ["3", "2"]
    dto = [math.hypot(0.3, 0.2), math.hypot(0.2, 0.25)]  # alpha t0, beta t0: the closest to (1, 0)
    assert [float(v) for v in row("best DTO")] == pytest.approx(dto, abs=5e-5)
    assert "IGD+ vs joint front (4 points)" in out
    # the two fronts side by side, best F1 first; alpha's dominated t2 is not listed
    side = [line for line in lines if "|" in line and "alpha_" in line]
    assert "alpha_t0" in side[0] and "beta_t0" in side[0] and "alpha_t1" in side[1] and "beta_t1" in side[1]
    assert "alpha_t2" not in out


def test_compare_json_and_runs_of_one_experiment(store, capsys):
    uri, run_ids = store
    assert main(["frontier", "--compare", f"alpha@{run_ids['alpha']}", "beta", "--tracking-uri", uri,
                 "--format", "json"]) == 0
    (panel,) = json.loads(capsys.readouterr().out)
    a, b = panel["sweeps"]
    assert (a["run_id"], b["experiment"]) == (run_ids["alpha"], "beta")
    assert a["igd_plus"] == pytest.approx(IGD_ALPHA) and b["igd_plus"] == pytest.approx(IGD_BETA)
    assert a["hypervolume"] == pytest.approx(HV_ALPHA) and len(panel["joint_front"]) == 4
    assert [t["trial_id"] for t in a["front"]] == ["alpha_t0", "alpha_t1"]
    # the same sweep against itself: identical quality, IGD+ 0
    assert main(["frontier", "--compare", "beta", "beta", "--tracking-uri", uri, "--format", "json"]) == 0
    (same,) = json.loads(capsys.readouterr().out)
    assert [s["igd_plus"] for s in same["sweeps"]] == [0.0, 0.0]


@pytest.mark.parametrize(("argv", "message"), [
    (["frontier", "alpha", "--compare", "alpha", "beta"], "--compare SWEEP_A SWEEP_B takes no SWEEP"),
    (["frontier", "--compare", "alpha", "beta", "--format", "csv"], "--compare prints a table or json"),
    (["frontier"], "name a SWEEP"),
])  # fmt: skip
def test_compare_refuses_what_it_cannot_do_in_one_line(store, capsys, argv, message):
    uri, _ = store
    assert main([*argv, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
