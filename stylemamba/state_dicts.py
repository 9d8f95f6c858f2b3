"""Comparing a file's tensors with a model's state dict, in words a user can act on."""

from __future__ import annotations

import torch


def state_dict_problems(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], shown: int = 8) -> str:
    """Missing, unexpected and mis-shaped keys as one line ("" when they match); long lists are cut."""
    problems = [f"missing {k}" for k in sorted(set(expected) - set(found))]
    problems += [f"unexpected {k}" for k in sorted(set(found) - set(expected))]
    problems += [
        f"{k}: file has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more
