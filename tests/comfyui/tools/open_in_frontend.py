"""Open workflows in a served ComfyUI frontend as a drop does and print what its issues panel lists (JSON).

Not a test (it needs Debian's chromium and pip's playwright, see ../shared/comfyui/README.md): run it by hand against a
server started with ``--front-end-root`` of the frontend to check, e.g.
``python open_in_frontend.py http://127.0.0.1:8231 workflows/*.json``. Each workflow goes through
``app.loadGraphData`` like a dropped file; the "N issues found" notice and the *Setup required* panel behind
*View details* (missing models with their source or "Unknown", missing inputs) are read from the page text.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
SETTLE_S = 4


def close_dialogs(page: Page) -> None:
    for _ in range(3):
        page.keyboard.press("Escape")
        time.sleep(1)


def setup_panel(page: Page) -> str:
    """The text from *Setup required* on, after opening *View details*; empty when the workflow has no issues."""
    button = page.get_by_text("View details", exact=True)
    if not button.count():
        return ""
    button.first.click(force=True, timeout=10000)
    time.sleep(2)
    text = page.evaluate("document.body.innerText")
    start = text.find("Setup required")
    return text[start:] if start >= 0 else text


def main(url: str, workflows: list[str]) -> dict:
    report = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url, wait_until="networkidle", timeout=120000)
        page.wait_for_function("window.app && window.app.graph", timeout=120000)
        close_dialogs(page)
        for path in workflows:
            page.evaluate("(w) => window.app.loadGraphData(w, true, true, 'dropped.json')", json.loads(Path(path).read_text()))
            time.sleep(SETTLE_S)
            notice = [line for line in page.evaluate("document.body.innerText").splitlines() if "issues found" in line]
            report[Path(path).name] = {"notice": notice[:1], "setup_required": [
                line for line in setup_panel(page).splitlines() if line.strip()]}
            close_dialogs(page)
        browser.close()
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:]), indent=1))
