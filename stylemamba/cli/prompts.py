"""The styles ``train`` and ``evaluate`` read: a styles file (one prompt per line) and style-image folders."""

from __future__ import annotations

from pathlib import Path

from ..images import IMAGE_SUFFIXES, list_images


def read_styles(path: Path) -> list[str]:
    """Prompts in file order: ``#`` starts a comment (whole line or after a prompt), blank lines and repeats are dropped.

    Both commands read a file through this, so a model is evaluated on exactly the prompts it was trained on.
    """
    if not path.is_file():
        raise FileNotFoundError(f"styles file not found: {path}")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    styles = list(dict.fromkeys(line for line in lines if line))
    if not styles:
        raise ValueError(f"{path} has no style prompts: write one per line, e.g. 'an oil painting by Van Gogh' ('#' starts a comment)")
    return styles


def read_style_folders(root: Path) -> dict[str, list[Path]]:
    """``root/<style name>/<images>``: one sub-folder per image style, named by the folder, in name order.

    Every sub-folder must hold images and images must not lie in ``root`` itself: a stray file would
    otherwise be silently ignored or a style silently empty.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"style image folder not found: {root}")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise ValueError(
            f"{root} holds images directly ({', '.join(loose[:3])}); put each style's images in its own sub-folder, "
            f"e.g. {root / 'van_gogh' / loose[0]}"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no sub-folders: put each style's reference images in one sub-folder, e.g. {root / 'van_gogh'}/")
    return {folder.name: list_images(folder) for folder in folders}
