"""Lets the command files of this folder run by path: ``python reward_server/reward_server.py``.

Run by path, Python puts this folder first on ``sys.path``; there ``reward_server.py`` would be
found as the module ``reward_server`` instead of the package. The command files import this module
first (only when they run by path, ``__package__`` empty): it loads the package from this folder and
registers it in ``sys.modules`` under its own name. ``sys.path`` is left alone, so the package is
found whatever the working directory and whether or not the project is installed. Run as modules
(``python -m reward_server``, ``python -m reward_server.health_check``) nothing of this is needed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "reward_server"


def register_package() -> None:
    """Make ``import reward_server...`` resolve to the package in this folder (idempotent)."""
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and hasattr(loaded, "__path__"):
        return
    folder = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


register_package()
