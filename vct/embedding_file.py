"""Learned concepts as textual-inversion files in the layout ComfyUI's ``CLIPTextEncode`` reads as ``embedding:<name>``:
``emb_params`` for one text encoder (SD1.5), ``clip_l`` + ``clip_g`` for SDXL, as SDXL textual inversions are stored."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .concept import Vectors

KEYS = {("l",): {"l": "emb_params"}, ("g", "l"): {"l": "clip_l", "g": "clip_g"}}


def free_path(folder: Path, name: str) -> Path:
    """``<name>.safetensors`` if free, else the first free ``<name>_00001.safetensors``, ...; refuses paths outside."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"embedding_name must be a plain file name (no folders), got {name!r}")
    candidate, index = folder / f"{name}.safetensors", 0
    while candidate.exists():
        index += 1
        candidate = folder / f"{name}_{index:05d}.safetensors"
    return candidate


def write_embedding(path: Path, vectors: Vectors, metadata: dict) -> Path:
    """Write atomically and never over an existing file (hard link of a finished temp file: fails if taken)."""
    layout = KEYS.get(tuple(sorted(vectors)))
    if layout is None:
        raise ValueError(f"text encoders {sorted(vectors)}: only SD1.5 (l) and SDXL (g + l) concepts are supported")
    tensors = {layout[name]: v.detach().float().cpu().contiguous() for name, v in vectors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp, metadata={"vct": json.dumps(metadata)})
        os.link(temp, path)
    finally:
        os.unlink(temp)
    return path


def read_header(path: Path) -> tuple[set[str], dict | None]:
    """The tensor names of an embedding file and the metadata ``write_embedding`` stored (None for another tool's file)."""
    with safe_open(str(path), "pt") as handle:
        keys, info = set(handle.keys()), (handle.metadata() or {}).get("vct")
    return keys, json.loads(info) if info else None
