"""The package's layers, checked on the source: lower layers never import upper ones at run time
(imports under ``if TYPE_CHECKING:`` are annotations only)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fairray"

#: package (or module) -> fairray packages it must not import
FORBIDDEN = {
    "inputs.py": {"*"},  # the inputs contract is a leaf
    "_typed.py": {"*"},
    "_local_model.py": {"*"},  # the one local-model loader, shared by data (extractors) and models
    "data": {"config", "sweep", "train", "export", "frontier", "report", "tracking"},
    "methods": {"train", "sweep", "config", "data", "export"},
    "models": {"train", "sweep", "config", "data", "methods", "export"},
    "metrics": {"train", "sweep", "methods", "models", "export"},
}
ALLOWED_FOR_LEAVES = {"errors", "_registry"}


def _runtime_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m.split(".", 2)[1] for m in found if m.startswith("fairray.")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    target = PACKAGE / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    assert files
    bad = []
    for f in files:
        for imported in _runtime_imports(f):
            forbidden = FORBIDDEN[layer]
            if ("*" in forbidden and imported not in ALLOWED_FOR_LEAVES) or imported in forbidden:
                bad.append(f"{f.relative_to(PACKAGE)} imports fairray.{imported}")
    assert not bad, bad
