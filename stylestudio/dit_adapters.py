"""DiT IP-Adapter files, whatever their layout: what the node needs from one, and which layout a file is.

The layouts live with their math (``flux_ip_adapter``: XLabs and InstantX Flux; ``sd3_ip_adapter``: InstantX
SD3.5), each exporting ``LAYOUTS``; this module reads a file once and asks each layout whether the file is its
own, so the node, the tests and the messages that refuse a file all see one list.
"""

import os
from typing import Any, Protocol

from torch import Tensor, nn

from .adapter_files import Groups, IPAdapterError, Layout, read_state_dict
from .dit import ImageBranch
from .dit_blocks import DiTBlock
from .flux_ip_adapter import LAYOUTS as FLUX_LAYOUTS
from .ip_adapter import CONTEXT_FAMILIES, parse_ip_adapter
from .sd3_ip_adapter import LAYOUTS as SD3_LAYOUTS


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


#: Every DiT IP-Adapter layout the pack reads, by name (each ``Layout.load`` gives a ``DiTAdapter``).
KNOWN_LAYOUTS: dict[str, Layout] = {**FLUX_LAYOUTS, **SD3_LAYOUTS}


def load_dit_adapter(path: str) -> DiTAdapter:
    """Read an IP-Adapter file (``.safetensors``, or ``.bin`` with tensors only) and build the adapter of its layout."""
    groups, name = read_state_dict(path), os.path.basename(path)
    for layout in KNOWN_LAYOUTS.values():
        if layout.recognise(groups):
            return layout.load(groups, name)
    raise IPAdapterError(f"{name!r}: {_not_a_dit_adapter(groups, name, KNOWN_LAYOUTS)}")


def _not_a_dit_adapter(groups: Groups, name: str, layouts: dict[str, Layout]) -> str:
    fits = "this node takes " + "; ".join(f"{layout} ({layouts[layout].fits})" for layout in sorted(layouts))
    try:
        unet = parse_ip_adapter(groups, name)
    except IPAdapterError:
        return f"not an IP-Adapter layout this node knows (top-level groups: {sorted(groups)[:8]}); {fits}"
    family = CONTEXT_FAMILIES.get(unet.context_dim, f"{unet.context_dim}-d context")
    return (f"an IP-Adapter for {family} UNets ({unet.kind}): it fits the StyleStudio Cross-Modal AdaIN node on SD1.5/SDXL models, "
            f"not a DiT; {fits}")
