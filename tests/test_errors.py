"""Every exception class the pack defines shows in ComfyUI's error dialog as its bare class name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from comfyui_stylemamba.errors import PackError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stylemamba", "stylestudio", "kernels", "nodes")


def comfyui_type_name(klass: type) -> str:
    """What ComfyUI 0.3.64's ``execution.full_type_name`` shows as an exception's type."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def defined_exception_classes() -> list[tuple[str, type]]:
    """(package, class) of every exception class (warnings aside) defined at the top level of a pack module, found by reading the source."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            names = [node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)]
            if not names:
                continue
            module = importlib.import_module("comfyui_stylemamba." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
            for name in names:
                klass = getattr(module, name)
                if issubclass(klass, BaseException) and not issubclass(klass, Warning):
                    found.append((package, klass))
    return found


EXCEPTIONS = defined_exception_classes()


def test_the_pack_defines_exceptions_to_check():
    names = {klass.__name__ for _, klass in EXCEPTIONS}
    assert {"CheckpointError", "EncoderNotFoundError", "IPAdapterError", "UnsupportedModelError"} <= names


@pytest.mark.parametrize("package, klass", EXCEPTIONS, ids=lambda value: getattr(value, "__name__", value))
def test_every_pack_exception_displays_its_short_name(package, klass):
    assert comfyui_type_name(klass) == klass.__qualname__ == klass.__name__
    if package != "kernels":  # kernels import nothing above them, so they set their module themselves
        assert issubclass(klass, PackError), f"{klass.__name__} must derive from errors.PackError"


def test_pack_errors_stay_the_builtin_they_refine():
    from comfyui_stylemamba.stylemamba.checkpoint import CheckpointError
    from comfyui_stylemamba.stylemamba.encoders import EncoderNotFoundError

    assert issubclass(CheckpointError, ValueError) and issubclass(EncoderNotFoundError, FileNotFoundError)
    error = EncoderNotFoundError("no SigLIP here")
    assert f"{comfyui_type_name(type(error))}: {error}" == "EncoderNotFoundError: no SigLIP here"
    assert comfyui_type_name(PackError) == "PackError"
