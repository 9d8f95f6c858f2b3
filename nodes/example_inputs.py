"""The templates' example inputs, put where ComfyUI's loaders look for them.

Every template opens with a content photo, a style picture, a mask or a clip on its LoadImage / LoadImageMask /
LoadVideo nodes. Those nodes list only ComfyUI's input folder, so the pack copies its own drawn examples
(``workflows/inputs/``, made by ``tests/comfyui/tools/make_example_inputs.py``) there when ComfyUI loads it: a template then runs
as opened, and the frontend reports no missing input. A file already there is never touched, whoever made it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import comfy_bridge

EXAMPLES = Path(__file__).resolve().parents[1] / "workflows" / "inputs"


def install_example_inputs(target: Path | None = None) -> list[str]:
    """Copy each example missing from ``target`` (default: ComfyUI's input folder); return the names copied.

    The copy is created exclusively, so a file that appears meanwhile is left alone; a folder that cannot be written
    costs a warning, never the pack's import.
    """
    target = target if target is not None else comfy_bridge.input_directory()
    if target is None:
        return []
    copied = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for example in sorted(EXAMPLES.iterdir()):
            if not example.is_file() or (target / example.name).exists():
                continue
            with open(example, "rb") as source, open(target / example.name, "xb") as copy:
                shutil.copyfileobj(source, copy)
            copied.append(example.name)
    except OSError as error:
        logging.warning("StyleMamba: could not copy the templates' example inputs to %s (%s); the templates will ask "
                        "for their pictures instead", target, error)
    return copied
