"""Where a pretrained model's files come from (a local folder or a hub id), and loading it quietly.

Every ``from_pretrained`` of the pack (SigLIP, the diffusers VAE, the CLIP metric model) asks
``pretrained_source`` first and loads inside ``quiet_loading``:

- a folder that does not exist, or a hub id that is not on this machine while ``HF_HUB_OFFLINE`` is set or
  the hub cannot be reached, fails at once with a message saying what to pass, instead of after ~30 s of
  download retries and an error about a file name;
- a model already in the hub cache loads without asking the network;
- a load prints nothing but the caller's own progress: the libraries' logging, their per-load "Loading
  weights" bars and the hub's deprecation warnings are silenced while it runs (a download's own progress
  bar is kept: it is the only sign of a long first run).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from ..errors import PackError

#: Values of HF_HUB_OFFLINE that huggingface_hub reads as "on".
_TRUE = {"1", "ON", "YES", "TRUE"}

#: Seconds to wait for the hub's address to answer before a download is given up as impossible.
HUB_PROBE_TIMEOUT = 5.0


class ModelSourceError(PackError, FileNotFoundError):
    """A pretrained model is neither on this machine nor downloadable now."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) is set: nothing may be downloaded."""
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(name: str) -> bool:
    """A file-system path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1 or name[1:3] == ":/"


def in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache on this machine holds the model's config.json (then nothing is downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id: the loader's own error says so
        return False


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (one connection attempt, no retries), or None when it answers."""
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as error:
        return f"{endpoint.hostname} cannot be reached: {error}"
    return None


def pretrained_source(name: str, what: str, files: str, error: type[Exception] = ModelSourceError) -> bool:
    """Check that ``name`` can be loaded without waiting on the network; returns ``local_files_only``.

    ``what`` names the model in messages (e.g. "VAE"), ``files`` says what a local folder of it holds, ``error``
    is the type raised (a loader's own not-found error). A local folder and a cached hub id load from disk
    (True); a hub id to download returns False.
    """
    if Path(name).expanduser().exists():
        return True
    if looks_like_path(name):
        raise error(f"{what} folder not found: {name} (a local folder holds {files})")
    if in_hub_cache(name):
        return True
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else hub_unreachable()
    if reason:
        raise error(
            f"{what} {name!r} is not on this machine and cannot be downloaded ({reason}). Download it once where the "
            f"hub is reachable (hf download {name} --local-dir <folder>) and pass that folder instead; "
            f"it holds {files}."
        )
    return False


@contextlib.contextmanager
def quiet_loading(*libraries: str) -> Iterator[None]:
    """Silence the named libraries' ("transformers", "diffusers") logging and per-load progress bars, and the hub's
    deprecation warnings. Only the libraries the load uses are named: importing diffusers alone takes seconds."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    loggings = [_logging_of(name) for name in libraries]
    saved = [(logging.get_verbosity(), logging.is_progress_bar_enabled()) for logging in loggings]
    downloads_shown = not are_progress_bars_disabled()
    for logging in loggings:
        logging.set_verbosity_error()
        logging.disable_progress_bar()  # transformers' also turns the hub's download bars off: they come back below
    if downloads_shown:
        enable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"huggingface_hub\.")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(huggingface_hub|transformers|diffusers)\.")
            yield
    finally:
        for logging, (verbosity, bars) in zip(loggings, saved):
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        (enable_progress_bars if downloads_shown else disable_progress_bars)()


def _logging_of(library: str):
    """``transformers.utils.logging`` / ``diffusers.utils.logging``: the same API in both."""
    import importlib

    return importlib.import_module(f"{library}.utils.logging")
