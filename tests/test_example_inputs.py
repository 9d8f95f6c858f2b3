"""The templates' example inputs: shipped, copied into ComfyUI's input folder without touching what is there, and the
ones every template's Load nodes name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_stylemamba.nodes.example_inputs import EXAMPLES, install_example_inputs

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
#: ComfyUI ships this one in its own input folder.
COMFYUI_INPUTS = {"example.png"}
LOADERS = {"LoadImage", "LoadImageMask", "LoadVideo"}


def test_every_example_is_copied_byte_for_byte_once(tmp_path):
    shipped = sorted(p.name for p in EXAMPLES.iterdir())
    assert {"stylemamba_example_photo.jpg", "stylemamba_example_style.jpg", "stylemamba_example_clip.mp4"} <= set(shipped)
    assert install_example_inputs(tmp_path / "input") == shipped
    assert all((tmp_path / "input" / name).read_bytes() == (EXAMPLES / name).read_bytes() for name in shipped)
    assert install_example_inputs(tmp_path / "input") == []  # a second load copies nothing


def test_a_file_already_there_is_never_touched(tmp_path):
    mine = tmp_path / "stylemamba_example_photo.jpg"
    mine.write_bytes(b"the user's own picture")
    copied = install_example_inputs(tmp_path)
    assert "stylemamba_example_photo.jpg" not in copied and mine.read_bytes() == b"the user's own picture"
    assert "stylemamba_example_style.jpg" in copied


def test_an_input_folder_that_is_a_file_costs_a_warning_not_the_import(tmp_path, caplog):
    blocker = tmp_path / "input"
    blocker.write_text("not a folder")
    assert install_example_inputs(blocker) == []
    assert "could not copy the templates' example inputs" in caplog.text and str(blocker) in caplog.text


def test_outside_comfyui_nothing_is_copied():
    assert install_example_inputs() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_template_input_is_an_example_the_pack_ships_or_comfyui_has(path):
    available = {p.name for p in EXAMPLES.iterdir()} | COMFYUI_INPUTS
    named = [n["widgets_values"][0] for n in json.loads(path.read_text())["nodes"] if n["type"] in LOADERS]
    assert named and set(named) <= available, sorted(set(named) - available)
