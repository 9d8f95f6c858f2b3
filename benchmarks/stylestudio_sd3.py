"""StyleStudio (DiT IP-Adapter) on SD3.5: the per-step overhead on a random-weight MM-DiT, and the teacher's hand-over.

Run in ComfyUI's python with cwd = the ComfyUI root (``PYTHONPATH=.``); the model is ComfyUI's own MMDiT
(``comfy.supported_models.SD3``: 64·depth wide, depth heads of 64, RMS q/k norm as SD3.5) with random weights, and the
adapter a random InstantX SD3.5 IP-Adapter at the model's width (``adapter_layouts.sd35_ip_adapter_layout``). The model is
called once per step as a sampler calls it with real CFG (cond and uncond in one batch of 2, as SD3.5 runs), through
the node's model wrapper; CPU seconds of this process per call (median of round-robin repeats) for: the model without
adapter, the plain IP-Adapter (strength 0), StyleStudio, and StyleStudio with the teacher active on every step; and the
bytes the teacher hands over per call (each block's image queries and keys), measured, beside the same count for SD3.5
Large. A separate script from ``stylestudio_dit.py`` because SD3's setting differs throughout (CFG batch, adapter file,
no Redux); the timing, the round robin and the hand-over count are both scripts' (``dit_overhead``).

    PYTHONPATH=. python .../benchmarks/stylestudio_sd3.py --depth 4 --side 32
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from pathlib import Path

ADAPTER = "sd35-ip-adapter.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=4, help="MMDiT depth: width 64·depth, depth heads")
    parser.add_argument("--blocks", type=int, default=4, help="joint blocks")
    parser.add_argument("--side", type=int, default=32, help="latent side (image tokens = (side/2)²)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", default="all blocks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sd35-side", type=int, default=1024, help="image side for the SD3.5 Large hand-over estimate")
    args = parser.parse_args()

    import comfy_standins as standins  # sets ComfyUI's --cpu before comfy.model_management loads
    import torch
    from adapter_layouts import sd35_ip_adapter_layout

    import comfyui_stylemamba.stylestudio.dit as dit
    from comfyui_stylemamba.nodes.stylestudio_dit_ipadapter_nodes import StyleStudioCrossAdaINDiTIPAdapter
    from dit_overhead import count_handover, print_table, round_robin_medians, seconds_per_call
    import folder_paths

    torch.set_num_threads(args.threads)  # CPU time of idle-spinning worker threads would count as work on a busy machine
    width, context = 64 * args.depth, 64
    base = standins.tiny_sd3(depth=args.depth, num_blocks=args.blocks, pos_embed_max_size=args.side // 2, num_patches=(args.side // 2) ** 2,
                             context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": context, "out_features": width}})
    handed = count_handover(dit)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, 16, args.side, args.side), generator=generator)
    c = {"c_crossattn": torch.randn(2, args.text_tokens, context, generator=generator),
         "y": torch.randn(2, standins.POOLED, generator=generator)}
    sigma = torch.tensor([1.0, 1.0])  # the first step's sigma: inside the teacher's window (the node call ends it at 50 %)

    with tempfile.TemporaryDirectory() as folder:
        layout = sd35_ip_adapter_layout(width, args.depth, args.blocks, features=standins.SD3_FEATURES, hidden=64, queries=16)
        torch.save(layout, Path(folder) / ADAPTER)
        folder_paths.add_model_folder_path("ipadapter", folder)

        def patched(strength: float, teacher: bool = False):
            """The node on the base model; teacher_end_percent 0.5 keeps the teacher on at the first step's sigma."""
            with torch.inference_mode():
                return StyleStudioCrossAdaINDiTIPAdapter().patch(base, ADAPTER, standins.StandInSiglipHidden(), standins.image(1.0),
                                                                 strength, args.layers, "0", 0.0, 1.0, teacher, 0.5)[0]

        configurations = {"no adapter": base, "plain IP-Adapter (strength 0)": patched(0.0),
                          f"StyleStudio, {args.layers}": patched(1.0),
                          f"StyleStudio, {args.layers}, teacher on every step": patched(1.0, teacher=True)}
    rows = round_robin_medians({name: lambda m=model: seconds_per_call(m, x, sigma, c, [0, 1], args.steps)
                                for name, model in configurations.items()}, args.repeats)
    tokens = (args.sd35_side // 16) ** 2
    sd35_bytes = 38 * 2 * 2432 * tokens * 2 * 2
    print(f"# StyleStudio (SD3.5 IP-Adapter) overhead, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: MMDiT {width} wide, {args.depth} heads, {args.blocks} joint blocks; {(args.side // 2) ** 2} image tokens, "
          f"{args.text_tokens} text tokens, 16 IP tokens; {args.steps} steps, CFG batch of 2\n")
    print_table(rows, "no adapter")
    print(f"\nhand-over per model call: {max(handed) / 2**20:.2f} MiB measured ({args.blocks} blocks, fp32, batch 2); SD3.5 Large "
          f"at {args.sd35_side}² in bf16 with CFG: 38 blocks × 2 × 2432 × {tokens} × 2 B × 2 = {sd35_bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
