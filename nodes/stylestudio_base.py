"""The node-side base of the three StyleStudio nodes: their shared widgets, the schedule window, and how patches go on a MODEL.

The StyleStudio nodes (``stylestudio_nodes``: SD1.5/SDXL; ``stylestudio_dit_nodes``: Flux with Redux;
``stylestudio_dit_ipadapter_nodes``: Flux and SD3.5 with an IP-Adapter) each stand on the core and on this module
alone: no node module imports another (``tests/test_architecture.py``). Shared node-side modules are the ones
without ``NODE_CLASS_MAPPINGS``: this one, ``comfy_bridge`` (the one seam to ComfyUI), ``widgets`` and
``image_sockets``. comfy is not imported here.
"""

from typing import Any

from ..errors import PackError
from ..stylestudio.dit import DiTBlockPatch, DiTStyleWrapper, ImageBranch, ImageStyle, ReduxStyle
from ..stylestudio.dit_blocks import DiTBlock
from ..stylestudio.hooks import SigmaWindow

#: ComfyUI's model folder of IP-Adapter files, shared with other IP-Adapter packs.
IPADAPTER_FOLDER = "ipadapter"
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.01}


class StyleStudioNode:
    """What the StyleStudio nodes share as ComfyUI nodes: their menu, their function ``patch``, and a patched MODEL out
    (the Redux node adds the conditionings it extends)."""

    RETURN_TYPES: tuple[str, ...] = ("MODEL",)
    RETURN_NAMES: tuple[str, ...] = ("model",)
    OUTPUT_TOOLTIPS: tuple[str, ...] = ("The patched model (a clone; the input model is unchanged).",)
    FUNCTION = "patch"
    CATEGORY = "style_transfer/StyleStudio"


def strength_input(zero_is: str) -> tuple:
    """The ``strength`` widget: the lerp from what ``zero_is`` (the model untouched, plain Redux, ...) to pure cross-modal AdaIN."""
    return ("FLOAT", {"default": 1.0, **PERCENT, "tooltip": f"0 is {zero_is}, 1 is pure cross-modal AdaIN."})


def style_image_input() -> tuple:
    return ("IMAGE", {"tooltip": "Style reference; several images in a batch are used together."})


def layer_inputs(presets: tuple[str, ...], presets_tooltip: str, custom_default: str, numbering: str) -> dict[str, tuple]:
    """The ``layers`` preset and ``custom_layers`` widgets: ``presets_tooltip`` says what each preset chooses,
    ``numbering`` how the model's blocks are counted for custom indices."""
    return {
        "layers": (list(presets), {"default": "style", "tooltip": presets_tooltip}),
        "custom_layers": ("STRING", {"default": custom_default, "tooltip": f"For layers=custom: {numbering}."}),
    }


def schedule_inputs() -> dict[str, tuple]:
    """The style's and the teacher's windows in the schedule: the same widgets, in the same order, on every StyleStudio node."""
    return {
        "start_percent": ("FLOAT", {"default": 0.0, **PERCENT, "tooltip": "Where in the schedule the style starts."}),
        "end_percent": ("FLOAT", {"default": 1.0, **PERCENT, "tooltip": "Where in the schedule the style ends."}),
        "teacher": ("BOOLEAN", {"default": True, "tooltip": (
            "Keep the prompt's layout with a text-only teacher pass (one extra model pass per step while it is active).")}),
        "teacher_end_percent": ("FLOAT", {"default": 0.4, **PERCENT, "tooltip": (
            "The teacher is active from the start to here (StyleStudio: 20 of 50 steps = 0.4).")}),
    }


def negative_style_input(effect: str) -> dict[str, tuple]:
    """The optional ``negative_style_image`` (style-based CFG); ``effect`` says where and when it acts."""
    return {"negative_style_image": ("IMAGE", {"tooltip": f"Style-based CFG: the style to steer away from{effect}"})}


def check_window(start_percent: float, end_percent: float) -> None:
    """Refuse a style window that ends before it starts, before anything is loaded."""
    if start_percent > end_percent:
        raise ValueError(f"start_percent ({start_percent}) must not be after end_percent ({end_percent})")


def sigma_window(patched: Any, start_percent: float, end_percent: float) -> SigmaWindow:
    """The style window of a MODEL's schedule, in its sigmas."""
    sampling = patched.get_model_object("model_sampling")
    return SigmaWindow(high=sampling.percent_to_sigma(start_percent), low=sampling.percent_to_sigma(end_percent))


def replace_patches(patched: Any, kind: str) -> dict:
    """The replace patches of ``kind`` ("attn1", "attn2", "dit") already on a MODEL, which ours chain to."""
    return patched.model_options["transformer_options"].get("patches_replace", {}).get(kind, {})


class SecondStyleError(PackError, ValueError):
    """A StyleStudio DiT node applied to a MODEL that already has one."""


def refuse_second_style(model: Any) -> None:
    """One StyleStudio DiT patch per MODEL: a second one's attention override would take the first one's partial
    attentions (image queries over text keys only, ...) for the block's joint attention and reroute them again."""
    wrapper = model.model_options.get("model_function_wrapper")
    while wrapper is not None:
        if isinstance(wrapper, DiTStyleWrapper):
            raise SecondStyleError(
                "This MODEL already carries a StyleStudio (DiT) patch: apply one StyleStudio DiT node per model. For "
                "several style images, batch them into style_image (Batch Images); they are used together.")
        wrapper = getattr(wrapper, "previous", None)


def patch_dit_blocks(model: Any, blocks: list[DiTBlock], selected: set[DiTBlock], style: ReduxStyle | ImageStyle,
                     strength: float, window_percent: tuple[float, float], teacher_end_percent: float | None,
                     branches: dict[DiTBlock, ImageBranch] | None = None) -> Any:
    """A clone of ``model`` with StyleStudio's block patch on every selected block (every block while a teacher is
    asked for: it hands over on all of them) and its model wrapper, each chained to what it displaces."""
    refuse_second_style(model)
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    window = sigma_window(patched, *window_percent)
    replaced = replace_patches(patched, "dit")
    branches = branches or {}
    for block in blocks if teacher_end_percent is not None else [b for b in blocks if b in selected]:
        chosen = block in selected
        patch = DiTBlockPatch(block, strength if chosen else 0.0, window, replaced.get(block), branches.get(block) if chosen else None)
        patched.set_model_patch_replace(patch, "dit", block[0], block[1])
    end_sigma = sampling.percent_to_sigma(teacher_end_percent) if teacher_end_percent is not None else None
    patched.set_model_unet_function_wrapper(DiTStyleWrapper(style, end_sigma, patched.model_options.get("model_function_wrapper")))
    return patched
