"""Adapter files, whatever the model family: read one into groups of tensors, and describe a layout that recognises its own.

A file is read once (``read_state_dict``) into ``{top-level group: {rest of the key: tensor}}``; each family's adapter
module then says, per layout, whether the groups are its own and how to load them (``Layout``), so every node and
every message that refuses a file sees one list.
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..errors import PackError

Groups = dict[str, dict[str, Tensor]]  # read_state_dict's {top-level group: {rest of the key: tensor}}


class IPAdapterError(PackError, ValueError):
    """An IP-Adapter file that cannot be used, or one that does not fit the model / CLIP vision."""


class Layout(NamedTuple):
    """One adapter layout: ``recognise(groups)`` says whether a file is one, ``load(groups, name)`` validates and builds its
    adapter, ``fits`` names the model, the file and the CLIP vision for the message that refuses another file."""

    recognise: Callable[[Groups], bool]
    load: Callable[[Groups, str], Any]
    fits: str


def read_state_dict(path: str) -> Groups:
    """Read ``.safetensors`` (flat, prefixed keys) or ``.bin``/``.pt`` (nested or flat) into ``{group: {key: tensor}}``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"IP-Adapter file not found: {path}")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader failure means the same thing to the user
        raise IPAdapterError(f"Cannot read IP-Adapter file {name!r}: {error}") from error
    if not isinstance(raw, dict):
        raise IPAdapterError(f"IP-Adapter file {name!r} holds a {type(raw).__name__}, not a state dict")
    groups: Groups = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            groups.setdefault(str(key), {}).update({str(k): v for k, v in value.items() if isinstance(v, Tensor)})
        elif isinstance(value, Tensor) and "." in str(key):
            group, rest = str(key).split(".", 1)
            groups.setdefault(group, {})[rest] = value
    return groups
