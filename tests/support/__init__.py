"""Test machinery shared by the test suites (importable as ``support`` because pytest puts ``tests/`` on
sys.path: ``[tool.pytest.ini_options] pythonpath``; subprocesses and Ray workers get it through
``PYTHONPATH``, see :func:`support.pythonpath`). Nothing here is shipped with the service."""
from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]


def pythonpath(environ=None) -> str:
    """``PYTHONPATH`` with ``tests/`` first: child processes (drivers, Ray workers) can import ``support``."""
    environ = os.environ if environ is None else environ
    return os.pathsep.join(p for p in (str(TESTS_DIR), environ.get("PYTHONPATH", "")) if p)
