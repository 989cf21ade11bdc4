"""Checks on user-given output paths, made before any work starts so that a bad path costs nothing.

An output file given as an existing folder, an output folder given as an existing file, or a path under a
file are one `ConfigError` naming the option (or settings key) and the path, instead of an OSError traceback
after minutes of work. Used by `vocab train`, `evaluate --out`, `export --out`, `predict --out`, `score --out`
and `finetune`'s `out`.
"""

from __future__ import annotations

import os
from pathlib import Path

from mobilebert.errors import ConfigError


def _check_parents(path: Path, key: str) -> None:
    """The nearest existing ancestor of `path` must be a folder we may write in."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{key} {path}: is a broken link (to {os.readlink(path)})")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"{key} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{key} {path}: cannot write in {parent} (permission denied)")
            return


def check_out_file(path: str | os.PathLike, key: str = "--out") -> Path:
    """An output file path: not an existing folder, and not under a file. Returns it as a Path."""
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise ConfigError(f"{key} {path}: is a folder; give a file name")
    _check_parents(path, key)
    return path


def check_out_dir(path: str | os.PathLike, key: str = "--out") -> Path:
    """An output folder path: an existing folder or a new one, not an existing file. Returns it as a Path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path}: is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key} {path}: cannot write in this folder (permission denied)")
        return path
    _check_parents(path, key)
    return path
