"""Checkpoint files: atomic writes and safe (``weights_only=True``) reads.

    save_checkpoint(state, path)   # temp file in the same directory + flush + fsync + os.replace
    state = load_checkpoint(path)  # torch.load(weights_only=True); CheckpointError on anything wrong

A checkpoint is one dict of plain state: tensors, numbers, strings, lists and dicts only (no
numpy arrays, no custom classes), so the restricted unpickler of ``weights_only=True`` loads it and
refuses anything else (a pickle naming a global outside torch's allowlist is rejected before any
object is built, so its ``__reduce__`` never runs). A crash mid-write leaves the previous file at
``path`` intact; the half-written temp file (``.<name>.tmp-*``) is removed when possible and never
has the final name.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, or holds objects outside the allowlist."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        except (OSError, AttributeError):
            pass
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; every failure is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path}: refused by the weights_only loader (it holds objects outside the "
            f"allowlist, or is corrupt): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict of state, got {type(state).__name__}")
    return state
