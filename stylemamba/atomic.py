"""Atomic file writes: a temp file beside the target, moved into place only once complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _default_mode() -> int:
    """rw for everyone the umask allows, as a plain ``open()`` would (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Call ``write(temp_path)`` then move the result to ``path``; nothing half-written is ever visible.

    Without ``overwrite`` an existing file is never replaced, even one that appears during the write.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        write(temp_name)
        os.chmod(temp_name, _default_mode())
        if overwrite:
            os.replace(temp_name, path)
        else:
            os.link(temp_name, path)  # fails if the name was taken meanwhile
            os.unlink(temp_name)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
