"""What every StyleMamba node shares on its face: the menu category, and widget text → values (lists of numbers typed
into a STRING widget: weights, strengths). A shared node-side module (no ``NODE_CLASS_MAPPINGS``): node modules import
it, never each other."""

from __future__ import annotations

import re

#: The StyleMamba nodes' menu category (the StyleStudio nodes have theirs in ``stylestudio_base``).
CATEGORY = "style_transfer/StyleMamba"


def parse_numbers(text: str, name: str, count: int | None = None) -> list[float]:
    """'1, 0.5' (commas, semicolons or spaces between numbers) → [1.0, 0.5]; ``count`` numbers when given.

    An empty text gives ``count`` ones (equal weights); without ``count`` it gives an empty list.
    """
    tokens = [token for token in re.split(r"[\s,;]+", text.strip()) if token]
    if not tokens:
        return [1.0] * count if count is not None else []
    numbers = []
    for token in tokens:
        try:
            numbers.append(float(token))
        except ValueError:
            raise ValueError(f"{name}: {token!r} is not a number; write numbers separated by commas, e.g. '1, 0.5'") from None
    if count is not None and len(numbers) != count:
        raise ValueError(f"{name}: {len(numbers)} numbers for {count} images; give one per image, or none for equal weights")
    return numbers
