"""Test machinery shared by the test suites; nothing here ships with the service.

Importable as ``testkit`` because ``tests/support`` is on sys.path (pytest: ``[tool.pytest.ini_options]
pythonpath``; driver subprocesses and Ray workers: ``PYTHONPATH``, see :func:`pythonpath`). The root is
``tests/support``, not ``tests/``: a folder holding ``tests/pahcl`` and ``tests/tune`` on the path would make
``import pahcl`` / ``import tune`` find those test folders as namespace packages instead of the installed ones.
"""
from __future__ import annotations

import os
from pathlib import Path

SUPPORT_DIR = Path(__file__).resolve().parents[1]  # tests/support


def pythonpath(environ=None) -> str:
    """``PYTHONPATH`` with ``tests/support`` first: child processes (drivers, Ray workers) import ``testkit``."""
    environ = os.environ if environ is None else environ
    return os.pathsep.join(p for p in (str(SUPPORT_DIR), environ.get("PYTHONPATH", "")) if p)
