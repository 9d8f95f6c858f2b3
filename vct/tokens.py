"""Which target-prompt token takes its cross-attention from which source-prompt token (prompt-to-prompt's refine
mapper), from token ids alone: a longest-matching alignment, with the concept's embedding vectors as new tokens."""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence

import torch

from .attention import CrossEdit


def refine_edit(source: Sequence[Hashable], target: Sequence[Hashable], concept: Sequence[bool], weight: float) -> CrossEdit:
    """A target token equal to an aligned source token (same id, in order) takes the source's column; the others keep
    their own. Concept tokens (``concept[i]``) are reweighted by ``weight``. Both prompts have the same token count."""
    if len(source) != len(target):
        raise ValueError(f"the source and target prompts encode to {len(source)} and {len(target)} tokens; "
                         "keep the target prompt within one 77-token chunk like the source's")
    mapper = torch.arange(len(target))
    alphas = torch.zeros(len(target))
    matcher = difflib.SequenceMatcher(a=list(source), b=list(target), autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            mapper[block.b + offset] = block.a + offset
            alphas[block.b + offset] = 1.0
    weights = torch.where(torch.tensor(list(concept), dtype=torch.bool), torch.tensor(weight), torch.tensor(1.0))
    return CrossEdit(mapper, alphas, weights)
