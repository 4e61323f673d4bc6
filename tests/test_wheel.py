"""fairray works installed from its wheel, not only from a checkout: the wheel is built, installed into a fresh
venv (its dependencies read from this environment's site-packages, not reinstalled), and a sweep -> frontier
--plot -> dashboard --out -> export -> predict runs there, outside the checkout, with the installed copy."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh venv holding the built wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and *.egg-info into the folder it builds
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".git", "fairray_runs", "build", "dist",
                                                             "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                    "-w", str(tmp / "dist")], check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("fairray-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path entry (after the venv's own, and without
    # running its .pth files, so the checkout's editable install is not seen)
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    Path(purelib, "zz_fairray_test_deps.pth").write_text("\n".join(deps) + "\n")
    # --target (which implies --ignore-installed): pip then never uninstalls the fairray of the environment it runs in
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--ignore-installed",
                    "--target", purelib, str(wheel)], check=True, timeout=300)
    return env_dir / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "python"), "-m", "fairray", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_installed_package_sweeps_plots_exports_and_predicts(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import fairray; print(fairray.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(ROOT)), where
    raw = yaml.safe_load((ROOT / "search_spaces" / "minmaxgap.yaml").read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"]["path"] = str(tmp_path / "runs")
    raw.pop("ablations", None)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    steps = [("sweep", str(spec), "--quiet"),
             ("frontier", str(spec), "--plot", str(tmp_path / "fronts.html")),
             ("dashboard", str(spec), "--out", str(tmp_path / "dashboard.html"), "--n-boot", "0"),
             ("export", str(spec), "--out", str(tmp_path / "pareto"))]
    for step in steps:
        done = _run(installed, *step, cwd=tmp_path)
        assert done.returncode == 0, f"fairray {' '.join(step)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "fronts.html").stat().st_size > 100_000  # plotly.js inside the page
    assert "plotly" in (tmp_path / "dashboard.html").read_text()[:200_000].lower()
    trial = next(p for p in (tmp_path / "pareto").iterdir() if p.is_dir())
    done = _run(installed, "predict", str(trial), "--split", "test", "--out", str(tmp_path / "preds.csv"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "preds.csv").read_text().count("\n") > 100
