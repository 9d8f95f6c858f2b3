"""DiT IP-Adapter files, whatever their layout: what the node needs from one, and which layout a file is.

The layouts live with their math (``flux_ip_adapter``: XLabs and InstantX Flux; ``sd3_ip_adapter``: InstantX
SD3.5), each exporting ``LAYOUTS``; this module reads a file once and asks each layout whether the file is its
own, so the node, the tests and the messages that refuse a file all see one list.
"""

import os
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from torch import Tensor, nn

from .dit import ImageBranch
from .dit_blocks import DiTBlock
from .ip_adapter import IPAdapterError, parse_ip_adapter, read_state_dict

Groups = dict[str, dict[str, Tensor]]  # read_state_dict's {top-level group: {rest of the key: tensor}}


class DiTAdapter(Protocol):
    """What the DiT IP-Adapter node needs from an adapter file, whatever its layout."""

    name: str
    layout: str

    def check_model(self, diffusion_model: nn.Module) -> None:
        """Raise a clear error when the MODEL is of another family or width."""

    def model_blocks(self, diffusion_model: nn.Module) -> list[DiTBlock]:
        """Every block of the MODEL in execution order: the numbering of the ``layers`` presets and custom indices."""

    def tokens(self, clip_output: Any) -> Tensor:
        """The style tokens ``(1, images * N, C)`` of a batch of reference images, from ``clip_vision.encode_image``."""

    def branches(self, positive: Tensor, negative: Tensor, diffusion_model: nn.Module) -> dict[DiTBlock, ImageBranch]:
        """Each block's branch: ``negative`` tokens on the unconditional half, ``positive`` on the conditional one."""

    @property
    def sampling_weights(self) -> nn.Module | None:
        """The tensors the branches read on the model's device every step, as one module the node has ComfyUI load, count and
        offload with the MODEL (InstantX SD3.5: its Resampler and per-block projections; Flux: every block's keys/values of
        the style images, which ``branches`` makes); None while there is nothing to load (Flux, before ``branches``)."""


class Layout(NamedTuple):
    """One adapter layout: ``recognise(groups)`` says whether a file is one, ``load(groups, name)`` validates and builds it,
    ``fits`` names the model, the file and the CLIP vision for the message that refuses another file."""

    recognise: Callable[[Groups], bool]
    load: Callable[[Groups, str], DiTAdapter]
    fits: str


def known_layouts() -> dict[str, Layout]:
    """Every DiT IP-Adapter layout the pack reads, by name.

    Imported here rather than at the top: the layout modules use this module's ``Groups`` and ``Layout``.
    """
    from .flux_ip_adapter import LAYOUTS as FLUX_LAYOUTS
    from .sd3_ip_adapter import LAYOUTS as SD3_LAYOUTS

    return {**FLUX_LAYOUTS, **SD3_LAYOUTS}


def load_dit_adapter(path: str) -> DiTAdapter:
    """Read an IP-Adapter file (``.safetensors``, or ``.bin`` with tensors only) and build the adapter of its layout."""
    groups, name = read_state_dict(path), os.path.basename(path)
    layouts = known_layouts()
    for layout in layouts.values():
        if layout.recognise(groups):
            return layout.load(groups, name)
    raise IPAdapterError(f"{name!r}: {_not_a_dit_adapter(groups, name, layouts)}")


def _not_a_dit_adapter(groups: Groups, name: str, layouts: dict[str, Layout]) -> str:
    fits = "this node takes " + "; ".join(f"{layout} ({layouts[layout].fits})" for layout in sorted(layouts))
    try:
        unet = parse_ip_adapter(groups, name)
    except IPAdapterError:
        return f"not an IP-Adapter layout this node knows (top-level groups: {sorted(groups)[:8]}); {fits}"
    family = {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}.get(unet.context_dim, f"{unet.context_dim}-d context")
    return (f"an IP-Adapter for {family} UNets ({unet.kind}): it fits the StyleStudio Cross-Modal AdaIN node on SD1.5/SDXL models, "
            f"not a DiT; {fits}")
