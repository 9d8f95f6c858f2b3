"""Why null-text inversion cut the CFG 7.5 drift only 1.2x on the tier's SDXL-shaped UNet (SD1.5 probe: 4.6x).

Runs the core's DDIM inversion and null-text optimisation (the content node's calls) on the tier probe's tiny SDXL
UNets (``tests/comfyui/probes/vct_in_comfyui.py``, random weights, content latent 8x8, 6 steps, CFG 7.5) with the
null embedding varied one thing at a time: its size, the inner-step budget, whether SDXL's ADM vector (pooled text +
size embeddings) is optimised with it, and the real conditioning of ComfyUI's SDXL CLIP (77 tokens x 2048). Prints a
Markdown table: RMS error to the content at CFG 1, at CFG 7.5 plain and after null-text, and the drift's reduction.

    cd <ComfyUI root> && PYTHONPATH=. python .../benchmarks/vct_null_text_sdxl.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROBES = Path(__file__).resolve().parents[1] / "tests" / "comfyui" / "probes"


def flat_null(null, with_adm: bool) -> tuple[object, Callable]:
    """The tensor to optimise and the unconditional ``Cond`` it stands for: the context alone (what the node does), or
    context and ADM vector as one flat tensor (the variant)."""
    import torch

    from comfyui_stylemamba.vct.fusion import NEGATIVE, Cond

    if not with_adm:
        return null.context, lambda e: Cond(e, null.adm, (NEGATIVE,))
    size = null.context.numel()
    start = torch.cat([null.context.flatten(), null.adm.flatten()])
    return start, lambda e: Cond(e[:size].view(null.context.shape), e[size:].view(null.adm.shape), (NEGATIVE,))


def row(probe, model, caption, null, inner: int, with_adm: bool, label: str) -> str:
    import torch

    from comfyui_stylemamba.vct import ddim

    eps = probe.ComfyEps(model)
    schedule = ddim.DDIMSchedule.from_table(model.get_model_object("model_sampling").sigmas, probe.STEPS)
    x0 = model.model.process_latent_in(probe.content_latent())
    start, make_uncond = flat_null(null, with_adm)
    with torch.inference_mode():
        path = ddim.invert(eps, x0, caption, schedule)
        cfg1 = probe.rms(ddim.sample(eps, path[-1], caption, None, schedule, 1.0), x0)
        plain = probe.rms(ddim.sample(eps, path[-1], caption, make_uncond(start), schedule, probe.CFG), x0)
        seconds = time.process_time()
        nulls, losses = ddim.null_text_optimise(eps, path, caption, start, make_uncond, schedule, probe.CFG,
                                                ddim.NullTextSettings(inner_steps=inner))
        seconds = time.process_time() - seconds
        null_text = probe.rms(ddim.sample(eps, path[-1], caption, [make_uncond(e) for e in nulls], schedule, probe.CFG), x0)
    return (f"| {label} | {start.numel()} | {inner} | {cfg1:.4f} | {plain:.4f} | {null_text:.4f} | {plain / null_text:.2f}x "
            f"| {max(losses):.5f} | {seconds:.1f} |")


def main() -> None:
    sys.path.insert(0, str(PROBES))
    import vct_in_comfyui as probe  # noqa: E402 - the tier probe's models (imports ComfyUI, which sets --cpu)

    import folder_paths
    import torch

    from comfyui_stylemamba.vct.fusion import NEGATIVE, Cond

    torch.set_num_threads(1)
    print("| null embedding | numbers optimised | inner steps | CFG 1 RMS | CFG 7.5 plain RMS | null-text RMS | "
          "drift reduction | worst step loss | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    model = probe.tiny_sdxl()
    generator = torch.Generator().manual_seed(8)  # the probe's sdxl_core draws
    adm = lambda pooled: model.model.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0,
                                                target_width=64, target_height=64)
    caption = Cond(torch.randn(1, 7, 32, generator=generator), adm(torch.randn(1, 32, generator=generator)))
    null = Cond(torch.zeros(1, 7, 32), adm(torch.zeros(1, 32)), (NEGATIVE,))
    print(row(probe, model, caption, null, 10, False, "tier sdxl_core: random 7x32 context (as tested)"), flush=True)
    print(row(probe, model, caption, null, 50, False, "the same, 50 inner steps"), flush=True)
    print(row(probe, model, caption, null, 10, True, "the same + ADM vector optimised"), flush=True)
    print(row(probe, model, caption, Cond(null.context, caption.adm, (NEGATIVE,)), 10, False,
              "the same, null given the caption's ADM"), flush=True)
    wide = Cond(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(8)), caption.adm)
    print(row(probe, model, wide, Cond(torch.zeros(1, 77, 32), null.adm, (NEGATIVE,)), 10, False,
              "random 77x32 context"), flush=True)
    with tempfile.TemporaryDirectory() as temp:
        folder_paths.folder_names_and_paths["embeddings"] = ([temp], folder_paths.supported_pt_extensions)
        model, clip = probe.tiny_sdxl(**probe.SDXL_TEXT), probe.tiny_sdxl_clip(Path(temp))
        caption = probe.encode_text(clip, model, clip.tokenize(probe.CAPTION), probe.LATENT[-2:])
        empty = probe.encode_text(clip, model, clip.tokenize(""), probe.LATENT[-2:])
        null = Cond(empty.context, empty.adm, (NEGATIVE,))
        print(row(probe, model, caption, null, 10, False, "ComfyUI's SDXL CLIP, 77x2048 (the node)"), flush=True)
        print(row(probe, model, caption, null, 10, True, "the same + ADM vector optimised"), flush=True)


if __name__ == "__main__":
    main()
