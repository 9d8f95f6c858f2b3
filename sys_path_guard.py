"""Keep this folder off ``sys.path``: it is a package, never an import root.

The repository root is the custom-node folder and holds the sub-packages ``kernels/`` and ``nodes/``.
When the folder itself is on ``sys.path`` (``python -m …`` started inside it puts the working directory
first), those sub-packages become top-level ``kernels`` and ``nodes`` and shadow the PyPI package
``kernels`` that transformers 5 / diffusers import for their hub kernels (and ComfyUI's ``nodes``).
The entry points that Python may start from inside the folder (``python -m comfyui_stylemamba``, its
torchrun workers, the test session) call ``drop_package_folder`` before anything imports a third-party
package. This module imports only the standard library, so calling it is always safe and cheap.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The folder that must not be an import root: this package's own.
PACKAGE_FOLDER = Path(__file__).resolve().parent


def _names_package_folder(entry: str) -> bool:
    """Whether a ``sys.path`` entry ('' = the working directory) is this folder."""
    try:
        return Path(entry or os.getcwd()).resolve() == PACKAGE_FOLDER
    except OSError:  # a deleted working directory names nothing
        return False


def drop_package_folder() -> None:
    """Remove every ``sys.path`` entry that names this package's folder."""
    sys.path[:] = [entry for entry in sys.path if not _names_package_folder(entry)]
