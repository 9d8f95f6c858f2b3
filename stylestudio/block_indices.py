"""The ``custom_layers`` widget's text as block indices, for every model family (UNet blocks and DiT blocks alike)."""


def parse_block_indices(text: str, count: int) -> list[int]:
    """Parse "0-3, 6" into sorted unique block indices in ``[0, count)``."""
    indices: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise ValueError(f"custom_layers: cannot read {part!r}; use block indices like '6' or '0-3, 6'")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high or high >= count:
            raise ValueError(f"custom_layers: {part!r} is outside 0-{count - 1} (this model has {count} cross-attention blocks)")
        indices.update(range(low, high + 1))
    if not indices:
        raise ValueError(f"custom_layers is empty; give block indices in 0-{count - 1}, e.g. '6' or '0-3, 6'")
    return sorted(indices)
