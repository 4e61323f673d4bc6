"""A Ray worker setup hook (``runtime_env={"worker_process_setup_hook": ...}``) that records, per process, which of
a few watched modules it imports: ``$FAIRRAY_IMPORT_PROBE/<pid>.txt``, one module name a line."""

from __future__ import annotations

import os
import sys

WATCHED = ("mlflow", "sqlalchemy", "alembic", "fairray.train.loop")


def install() -> None:
    folder = os.environ["FAIRRAY_IMPORT_PROBE"]
    path = os.path.join(folder, f"{os.getpid()}.txt")

    def note(name: str) -> None:
        with open(path, "a") as f:
            f.write(name + "\n")

    for name in WATCHED:  # imported before this hook ran
        if name in sys.modules:
            note(name)
    seen = set()

    def hook(event: str, args) -> None:
        # a module imported through importlib.import_module (fairray's lazy names, PEP 562) raises no "import"
        # event of its own: each event also notes the watched modules that have appeared in sys.modules meanwhile
        if event != "import":
            return
        for name in WATCHED:
            if name not in seen and (name == args[0] or name in sys.modules):
                seen.add(name)
                note(name)

    sys.addaudithook(hook)
