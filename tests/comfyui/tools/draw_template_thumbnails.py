"""Draw ``workflows/<name>.jpg`` for every template: the graph's nodes where the workflow puts them, titled, with links.

The frontend's template browser shows ``/api/workflow_templates/<pack>/<name>.jpg`` beside a custom node pack's template;
a schematic of the graph tells what the template does without running a model. Run from the repository root:
``python tests/comfyui/tools/draw_template_thumbnails.py``; it overwrites the pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

WORKFLOWS = Path(__file__).resolve().parents[3] / "workflows"
SIZE = (512, 288)
MARGIN = 12
COLOURS = {"StyleMamba": (70, 110, 170), "StyleStudio": (150, 90, 150), "Load": (80, 130, 90), "": (90, 90, 90)}


def colour(node_type: str) -> tuple[int, int, int]:
    for key in ("StyleStudio", "Load"):
        if key in node_type:
            return COLOURS[key]
    ours = ("Style", "Train")
    return COLOURS["StyleMamba"] if node_type.startswith(ours) or node_type.endswith("StyleMamba") else COLOURS[""]


def draw(workflow: dict) -> Image.Image:
    nodes = [n for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")]
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes)
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = min((SIZE[0] - 2 * MARGIN) / (right - left), (SIZE[1] - 2 * MARGIN) / (bottom - top))

    def box(node: dict) -> tuple[float, float, float, float]:
        x, y = (node["pos"][0] - left) * scale + MARGIN, (node["pos"][1] - top) * scale + MARGIN
        return x, y, x + node["size"][0] * scale, y + node["size"][1] * scale

    picture = Image.new("RGB", SIZE, (32, 32, 36))
    pen = ImageDraw.Draw(picture)
    boxes = {n["id"]: box(n) for n in nodes}
    for _, source, _, target, _, _ in workflow["links"]:
        if source in boxes and target in boxes:
            a, b = boxes[source], boxes[target]
            pen.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(200, 200, 120), width=1)
    for node in nodes:
        x0, y0, x1, y1 = boxes[node["id"]]
        pen.rectangle([x0, y0, x1, y1], fill=colour(node["type"]), outline=(230, 230, 230))
        pen.text((x0 + 3, y0 + 2), node.get("title", node["type"])[: max(3, int((x1 - x0) / 6))], fill=(255, 255, 255))
    return picture


def main() -> None:
    for path in sorted(WORKFLOWS.glob("*.json")):
        draw(json.loads(path.read_text())).save(path.with_suffix(".jpg"), quality=85)
        print(f"wrote {path.with_suffix('.jpg').name}")


if __name__ == "__main__":
    main()
