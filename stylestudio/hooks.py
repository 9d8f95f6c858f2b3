"""The sampling-time machinery every StyleStudio patch stands on, whatever the model family.

* ``SigmaWindow``: where in the schedule a patch acts;
* ``ChainedPatch``: the base of every patch and wrapper, which keeps what it displaced and passes ComfyUI's
  ``.to(device)`` / ``.to(dtype)`` calls on to it, so our patches stack with other packs';
* the teacher: ``TeacherHandover`` travels in ``transformer_options[TEACHER_KEY]`` from the text-only pass, which
  records each layer's queries/keys, to the styled pass, which uses them; ``run_teacher_then_styled`` runs the two
  passes and ``call_model`` is how a model function wrapper calls on with its own options added.

ComfyUI deep-copies ``model_options`` on every ``ModelPatcher.clone()``; per-call state therefore travels in
``transformer_options``, never in the patch objects.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

TEACHER_KEY = "stylestudio_teacher"
NEGATIVE = 1  # ComfyUI's index for the uncond half in cond_or_uncond


@dataclass(frozen=True)
class SigmaWindow:
    """Active while ``low <= sigma <= high`` (ComfyUI's start/end percent turned into sigmas)."""

    high: float
    low: float

    def contains(self, sigmas: Tensor | None) -> bool:
        if sigmas is None:
            return True
        sigma = float(sigmas.max())
        return self.low <= sigma <= self.high


@dataclass
class TeacherHandover:
    """Teacher queries/keys per self-attention layer or block: recorded in the text-only pass, consumed by the styled one."""

    recording: bool
    qk: dict[Any, tuple[Tensor, Tensor]] = field(default_factory=dict)


class ChainedPatch:
    """Base of our patches: remembers what it displaced and tells it about ComfyUI's device moves.

    ComfyUI calls ``.to(device)`` and ``.to(dtype)`` on every patch and UNet wrapper when it loads or
    unloads the model; the patch we displaced no longer sits where ComfyUI looks, so we pass it on.
    """

    previous: Any

    def __deepcopy__(self, memo: dict) -> "ChainedPatch":
        return self  # holds no per-model state: clones share it

    def to(self, device_or_dtype: torch.device | torch.dtype) -> "ChainedPatch":
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self


def call_model(previous: Callable | None, apply_model: Callable, args: dict[str, Any], options: dict[str, Any]) -> Tensor:
    """Call on from a model function wrapper: the wrapper it displaced (``previous``) or the model, with ``options``
    added to the call's ``transformer_options`` (a copy: the caller's dicts stay as they are)."""
    if options:
        c = dict(args["c"])
        c["transformer_options"] = {**c.get("transformer_options", {}), **options}
        args = {**args, "c": c}
    if previous is not None:
        return previous(apply_model, args)
    return apply_model(args["input"], args["timestep"], **args["c"])


def run_teacher_then_styled(run: Callable[[TeacherHandover], Tensor],
                            run_teacher: Callable[[TeacherHandover], Tensor] | None = None) -> Tensor:
    """The teacher's two passes: ``run_teacher`` (default ``run``) records every layer's queries/keys, then ``run`` is the
    styled pass that uses them; the styled pass's output is the model's."""
    record = TeacherHandover(recording=True)
    (run_teacher or run)(record)
    return run(TeacherHandover(recording=False, qk=record.qk))
