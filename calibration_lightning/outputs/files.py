"""Atomic writes: a file is written beside its target, flushed, then renamed over it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], directory: bool = False) -> Path:
    """Call ``write(tmp)`` on a file (or, with ``directory``, a folder, e.g. a saved adapter) beside ``path``,
    then rename it onto ``path``: readers never see a half-written output, and a kill leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        for inner in tmp.rglob("*") if directory else ():  # safetensors writes its files 0600
            os.chmod(inner, (0o777 if inner.is_dir() else 0o666) & ~_umask())
        if not directory:
            os.replace(tmp, path)
        else:  # a folder cannot be renamed over a non-empty one: the old one is moved aside first
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
