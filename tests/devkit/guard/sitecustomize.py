"""Imported by Python at start-up in every process the tests and the demo start: the loopback guard.

tests/devkit/netguard.py puts this folder on PYTHONPATH; the guard module is loaded by its path, so nothing
else of the checkout lands on the daemon's import path.
"""

import importlib.util
import os
from pathlib import Path

if os.environ.get("SUBDOMAIND_LOOPBACK_ONLY") == "1":
    _spec = importlib.util.spec_from_file_location("_subdomaind_netguard", Path(__file__).resolve().parent.parent / "netguard.py")
    assert _spec is not None and _spec.loader is not None
    _guard = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_guard)
    _guard.install()
