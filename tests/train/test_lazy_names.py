"""``fairray.train`` and ``fairray.sweep`` import their names on first use (PEP 562): importing the packages pulls
in neither torch nor the runner, yet every public name resolves, ``dir()`` lists them, and ``import *`` gives them."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import fairray.train as t, fairray.sweep as s
assert "torch" not in sys.modules and "fairray.sweep.runner" not in sys.modules, "imported eagerly"
for m in (t, s):
    missing = [n for n in m.__all__ if n not in dir(m)]
    assert not missing, (m.__name__, missing)
assert "torch" not in sys.modules, "dir() imported the names"
ns = {}
exec("from fairray.train import *; from fairray.sweep import *", ns)
assert {*t.__all__, *s.__all__} <= ns.keys()
from fairray.train.loop import run_trial
assert t.run_trial is run_trial and callable(s.run_sweep)
try:
    t.not_a_name
except AttributeError as e:
    assert "not_a_name" in str(e)
else:
    raise AssertionError("unknown name resolved")
print("ok")
"""


def test_the_packages_import_light_and_every_public_name_resolves():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
