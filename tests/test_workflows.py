"""Example workflows: every node exists, every link joins matching sockets, widget values fit our nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_stylemamba import NODE_CLASS_MAPPINGS

from comfy_core_nodes import CORE_NODES

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def sockets(node_type: str) -> tuple[dict[str, str], tuple[str, ...], list[tuple[str, tuple]]]:
    """(input sockets, output types, widget inputs) of a node type, ours or core."""
    if node_type in CORE_NODES:
        inputs, outputs = CORE_NODES[node_type]
        return inputs, outputs, []
    node = NODE_CLASS_MAPPINGS[node_type]
    spec = node.INPUT_TYPES()
    ordered = [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]
    socket_inputs = {n: s[0] for n, s in ordered if isinstance(s[0], str) and s[0] not in WIDGET_TYPES}
    widgets = [(n, s) for n, s in ordered if isinstance(s[0], list) or s[0] in WIDGET_TYPES]
    return socket_inputs, node.RETURN_TYPES, widgets


def node_class_optional(node_type: str) -> list[str]:
    return list(NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES().get("optional", {}))


def trailing_optional(widgets: list[tuple[str, tuple]], optional: set[str]) -> int:
    """How many widgets at the end are optional inputs (a saved workflow may predate them)."""
    count = 0
    for name, _ in reversed(widgets):
        if name not in optional:
            break
        count += 1
    return count


def test_the_main_workflow_is_there():
    assert "text_style_transfer.json" in {w.name for w in WORKFLOWS}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_nodes_exist_and_links_join_matching_sockets(path):
    workflow = json.loads(path.read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    unknown = sorted({n["type"] for n in nodes.values()} - set(NODE_CLASS_MAPPINGS) - set(CORE_NODES) - {"Note", "MarkdownNote"})
    assert unknown == [], f"{path.name} uses node types we do not know: {unknown}"
    for link_id, from_id, from_slot, to_id, to_slot, link_type in workflow["links"]:
        source, target = nodes[from_id], nodes[to_id]
        _, outputs, _ = sockets(source["type"])
        assert outputs[from_slot] == link_type, f"link {link_id}: {source['type']} output {from_slot} is {outputs[from_slot]}"
        target_input = target["inputs"][to_slot]
        assert target_input["link"] == link_id and target_input["type"] == link_type
        inputs, _, widgets = sockets(target["type"])
        if "widget" in target_input:  # a widget the UI turned into an input socket (e.g. VCTFusion's concept)
            inputs = {name: spec[0] for name, spec in widgets}
        assert inputs.get(target_input["name"]) == link_type, f"link {link_id}: {target['type']} has no {link_type} input {target_input['name']}"
        assert link_id in source["outputs"][from_slot]["links"]
    assert workflow["last_link_id"] >= max(l[0] for l in workflow["links"])
    assert workflow["last_node_id"] >= max(nodes)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_widget_values_fit_our_nodes(path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] not in NODE_CLASS_MAPPINGS:
            continue
        _, _, widgets = sockets(node["type"])
        values = list(node.get("widgets_values", []))
        expected = sum(2 if n in ("seed", "noise_seed") or (len(s) > 1 and s[1].get("control_after_generate")) else 1 for n, s in widgets)
        # A workflow saved before an optional widget existed lacks its value; ComfyUI then uses the default.
        optional = set(node_class_optional(node["type"]))
        saved = expected - trailing_optional(widgets, optional)
        assert saved <= len(values) <= expected, (
            f"{path.name} node {node['id']} ({node['type']}): {len(values)} widget values for {expected} widgets"
        )
        index = 0
        for name, spec in widgets:
            if index >= len(values):
                break
            value = values[index]
            index += 2 if name in ("seed", "noise_seed") or (len(spec) > 1 and spec[1].get("control_after_generate")) else 1
            options = spec[1] if len(spec) > 1 else {}
            if spec[0] in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{node['type']}.{name}={value}"
            elif spec[0] == "BOOLEAN":
                assert isinstance(value, bool)
            elif spec[0] == "STRING":
                assert isinstance(value, str)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_template_has_a_thumbnail_for_the_template_browser(path):
    """The frontend shows /api/workflow_templates/<pack>/<name>.jpg beside a custom node pack's template."""
    from PIL import Image

    with Image.open(path.with_suffix(".jpg")) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (512, 288)


#: LiteGraph draws a node's title bar above its ``pos``.
TITLE_BAR = 30


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_node_covers_another(path):
    """A template opens readable: no node (title bar included) lies over another one."""
    nodes = json.loads(path.read_text())["nodes"]
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_BAR, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes]
    overlapping = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                   if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert overlapping == []
