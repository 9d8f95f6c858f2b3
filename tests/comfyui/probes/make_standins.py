"""Random-weight stand-ins, in the real on-disk formats, for every model file the example workflows load.

Usage (in ComfyUI's venv, cwd = ComfyUI root): ``make_standins.py BASE [IMAGES]``. Writes a ComfyUI
``--base-directory`` tree: ``BASE/models/<folder>/<file>`` and small content/style pictures in
``BASE/input`` (resized from IMAGES when given, else drawn). Last stdout line: JSON with every file
written, what ComfyUI's own detection makes of the checkpoint, and the seconds taken.

ComfyUI recognises an SD1.5 checkpoint by its UNet's 320 base channels and 768-d cross-attention
(``comfy.supported_models.SD15``), builds the text encoder and the VAE from fixed configs, and picks a
CLIP-vision config by layer count (ViT-L's 24 layers are the fewest it knows), so those parts keep
their real sizes. The UNet's channel multipliers are read from the file, so the stand-in keeps every
level at 320 channels: 111 M parameters instead of 860 M, with SD1.5's 16 cross-attention blocks in
SD1.5's places (StyleStudio's "style" layer preset and IP-Adapter's layer numbering depend on them).
Weights are stored in fp16, as released checkpoints are. Key layouts: ldm (UNet, VAE, ControlNet, as
ComfyUI's own ldm-derived modules name them), Hugging Face ``CLIPTextModel``/``CLIPVisionModelWithProjection``
(as SD1.5 checkpoints and CLIP-vision releases store them), IP-Adapter's ``image_proj``/``ip_adapter``
groups (flat keys in .safetensors, nested dicts in .bin) and CSGO's ``style_image_proj``.

Flux.1: ComfyUI reads only the block counts of a Flux file (width 3072, 4096-d text, 24 heads are fixed), so the
stand-in keeps one double and one single block (0.55 G parameters instead of 12 G) in the released unprefixed
layout, with a 16-channel ldm VAE (``ae``, no quant convs), Redux at its one size and SigLIP so400m/384 (fixed
by its 27 layers and 729 positions) in the Hugging Face layout, and an XLabs flux-ip-adapter for that one double
block (full width, reading the CLIP ViT-L stand-in). The T5-XXL text encoder (4.7 G, fixed) has no
stand-in: the test swaps it for ``tests/comfyui/standin_nodes`` (see ``test_server.py``).

SD3.5: ComfyUI reads an MM-DiT's whole size from its file (width 64·depth, one joint block per depth, the text
widths from the embedders), so the stand-in is an SD3.5-Large-shaped MM-DiT (RMS q/k norm, no second image
attention, SD3's 4096-d context and 2048-d pooled text) only 4 deep: 256 wide, 4 heads of 64, 4 joint blocks, in a
checkpoint with SD3's 16-channel VAE (what ``sd3.5_large.safetensors`` holds), and InstantX's SD3.5 IP-Adapter ``.bin``
for exactly that width and depth, reading SigLIP so400m (the Flux set's stand-in). Its text encoders (CLIP-L, CLIP-G,
T5-XXL through TripleCLIPLoader, fixed sizes) have no stand-in: the test swaps them as for Flux.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from comfy.cli_args import args

args.cpu = True

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.model_detection  # noqa: E402
import comfy.ops  # noqa: E402
from comfy.cldm.cldm import ControlNet  # noqa: E402
from comfy.ldm.flux.model import Flux  # noqa: E402
from comfy.ldm.flux.redux import ReduxImageEncoder  # noqa: E402
from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT  # noqa: E402

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS), str(TESTS.parent / "benchmarks")]  # the test builders; the adapter layouts benchmarks share
from adapter_layouts import sd35_ip_adapter_layout, xlabs_flux_ip_adapter  # noqa: E402
from builders import TINY_EMBED_DIM, build_tiny_siglip, pan_zoom_clip, tiny_config, trained_like  # noqa: E402

from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba, save_checkpoint  # noqa: E402
from comfyui_stylemamba.stylemamba.config import DEFAULT_TEXT_ENCODER  # noqa: E402

CONTEXT_DIM = 768  # SD1.5's CLIP-L text width, which ComfyUI's SD15 detection requires
CLIP_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   patch_size=14, image_size=224, projection_dim=768)  # ViT-L/14, comfy/clip_vision_config_vitl.json
UNET = dict(
    image_size=32, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 1, 1, 1],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1, context_dim=CONTEXT_DIM,
    use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False, num_heads=8, num_head_channels=-1,
    use_checkpoint=False, adm_in_channels=None,
)
SD_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
#: What comfy/model_detection.py fixes for any Flux.1 file; only the block counts (and guidance_in: dev) come from it.
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
            mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True)
SD35_DEPTH = 4  # joint blocks; SD3.5 Large: 38
SD35_WIDTH = 64 * SD35_DEPTH  # ComfyUI's MMDiT is 64·depth wide (SD3.5 Large: 2432)
#: ComfyUI's MMDiT as comfy/model_detection.py reads it from an SD3.5 Large file, but SD35_DEPTH deep.
SD35 = dict(in_channels=16, out_channels=16, patch_size=2, depth=SD35_DEPTH, adm_in_channels=2048, qk_norm="rms",
            pos_embed_max_size=16, num_patches=256,
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": SD35_WIDTH}})
#: comfy/clip_vision_siglip_384.json, the SigLIP so400m that Flux Redux reads.
SIGLIP_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=14,
                  image_size=384, hidden_act="gelu_pytorch_tanh")
IMAGES = {"boat.jpg": "boat.jpg", "tubingen.jpeg": "tubingen.jpeg", "style.png": "flower.jpg"}
#: comfy/sd.py's Wan 2.1 VAE config (what ComfyUI builds when it finds ``decoder.middle.0.residual.0.gamma``).
WAN21_VAE = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
#: The video workflow's clip: 4·1 + 1 frames (one Wan latent frame plus one), 64×96 px, 8 fps.
CLIP, CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = "clip.mp4", 9, (64, 96), 8  # 9 frames: the 3 Wan latent frames a video fit needs
IMAGE_SIDE = 96
MASK = "boat_mask.png"
COMFYUI_EXAMPLE = Path("input") / "example.png"  # relative to the ComfyUI root, the probe's working directory
POOL_SIZE = 1 << 22


def random_weights(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """fp16 values with the scales a trained net has: norms 1 (``weight``, RMS-norm ``scale``), biases 0, weights ~ N(0, 1/fan-in).

    Each weight is a window of one shared pool of normal numbers (tiled where larger), scaled: drawing
    ~750 M fresh numbers would cost half a minute on two cores and tell ComfyUI nothing more.
    """
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL_SIZE, generator=generator).half().repeat(2)  # any window of POOL_SIZE is a slice
    out = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            out[name] = torch.zeros(shape, dtype=torch.float16)
        elif len(shape) == 1 and name.endswith(("weight", "scale")):
            out[name] = torch.ones(shape, dtype=torch.float16)
        else:
            count, fan_in = math.prod(shape), math.prod(shape[1:]) if len(shape) > 1 else shape[-1]
            start = int(torch.randint(POOL_SIZE, (), generator=generator))
            values = pool[start:start + count] if count <= POOL_SIZE else pool.repeat(-(-count // len(pool)))[:count]
            out[name] = (values * (1 / math.sqrt(fan_in))).reshape(shape)
    return out


def shapes_of(build, prefix: str = "") -> dict[str, torch.Size]:
    """Key layout of a module built on the meta device: its names and shapes, no memory."""
    with torch.device("meta"):
        module = build()
    return {prefix + name: tensor.shape for name, tensor in module.state_dict().items()}


def unet_shapes() -> dict[str, torch.Size]:
    return shapes_of(lambda: UNetModel(out_channels=4, transformer_depth_output=[1] * 9 + [0] * 3, **UNET,
                                       operations=comfy.ops.manual_cast), "model.diffusion_model.")


def vae_shapes(prefix: str = "") -> dict[str, torch.Size]:
    return shapes_of(lambda: AutoencoderKL(ddconfig=SD_VAE, embed_dim=SD_VAE["z_channels"]), prefix)


def clip_text_shapes() -> dict[str, torch.Size]:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(hidden_size=CONTEXT_DIM, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=77, vocab_size=49408)
    return shapes_of(lambda: CLIPTextModel(config), "cond_stage_model.transformer.")


def clip_vision_shapes() -> dict[str, torch.Size]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return shapes_of(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION)))


def controlnet_shapes() -> dict[str, torch.Size]:
    return shapes_of(lambda: ControlNet(hint_channels=3, **UNET, operations=comfy.ops.manual_cast), "control_model.")


def flux_shapes() -> dict[str, torch.Size]:
    return shapes_of(lambda: Flux(**FLUX, operations=comfy.ops.manual_cast))


def flux_vae_shapes(prefix: str = "") -> dict[str, torch.Size]:
    """Flux's ``ae`` and SD3's VAE: the ldm encoder/decoder, 16 latent channels, no quant convs (ComfyUI's AutoencodingEngine)."""
    ddconfig = {**SD_VAE, "z_channels": 16}
    regularizer = {"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"}
    return shapes_of(lambda: AutoencodingEngine(
        regularizer_config=regularizer,
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig}), prefix)


def siglip_shapes() -> dict[str, torch.Size]:
    """``SiglipVisionModel`` keys under ``vision_model.``, as released files store them (some transformers drop it)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    shapes = shapes_of(lambda: SiglipVisionModel(SiglipVisionConfig(**SIGLIP_384)))
    return {"vision_model." + name.removeprefix("vision_model."): shape for name, shape in shapes.items()}


def write_flux(models: Path) -> dict:
    """The Flux.1 stand-ins, what ComfyUI's detection makes of the diffusion model, and the seconds they took."""
    start = time.perf_counter()
    flux = random_weights(flux_shapes(), 8)
    detected = comfy.model_detection.model_config_from_unet(flux, "")
    xlabs = xlabs_flux_ip_adapter(torch.Generator().manual_seed(12), FLUX["hidden_size"], FLUX["context_in_dim"],
                                  CLIP_VISION["projection_dim"], doubles=FLUX["depth"])
    return {"files": {
        "diffusion_models": [write(models / "diffusion_models" / "flux1_standin.safetensors", flux)],
        "style_models": [write(models / "style_models" / "flux1_redux_standin.safetensors",
                               random_weights(shapes_of(ReduxImageEncoder), 9))],
        "clip_vision": [write(models / "clip_vision" / "sigclip_vision_384_standin.safetensors",
                              random_weights(siglip_shapes(), 10))],
        "vae": [write(models / "vae" / "flux_ae_standin.safetensors", random_weights(flux_vae_shapes(), 11))],
        "ipadapter": [write(models / "ipadapter" / "flux-ip-adapter_standin.safetensors", {k: v.half() for k, v in xlabs.items()})],
    }, "flux_detected_as": type(detected).__name__ if detected else None,
        "flux_parameters": sum(v.numel() for v in flux.values()), "flux_seconds": round(time.perf_counter() - start, 1)}


def write_sd35(models: Path) -> dict:
    """The SD3.5 stand-ins (a checkpoint with its VAE, InstantX's IP-Adapter) and what ComfyUI's detection makes of it."""
    mmdit = shapes_of(lambda: MMDiT(**SD35, operations=comfy.ops.manual_cast), "model.diffusion_model.")
    checkpoint = {**random_weights(mmdit, 13), **random_weights(flux_vae_shapes("first_stage_model."), 14)}
    detected = comfy.model_detection.model_config_from_unet(checkpoint, "model.diffusion_model.")
    adapter = sd35_ip_adapter_layout(SD35_WIDTH, SD35_DEPTH, SD35_DEPTH, features=SIGLIP_384["hidden_size"], seed=15)
    path = models / "ipadapter" / "sd35-ip-adapter_standin.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({group: {k: v.half() for k, v in tensors.items()} for group, tensors in adapter.items()}, path)
    return {"files": {"checkpoints": [write(models / "checkpoints" / "sd35_standin.safetensors", checkpoint)],
                      "ipadapter": [path.name]},
            "sd35_detected_as": type(detected).__name__ if detected else None,
            "sd35_mmdit_parameters": sum(math.prod(s) for s in mmdit.values())}


def wan_vae_weights(seed: int) -> dict[str, torch.Tensor]:
    """Wan 2.1 VAE stand-in; its RMS-norm ``gamma`` scales are ones, as random ones would blow activations up."""
    from comfy.ldm.wan.vae import WanVAE

    weights = random_weights(shapes_of(lambda: WanVAE(**WAN21_VAE)), seed)
    return {k: torch.ones_like(v) if k.endswith("gamma") else v for k, v in weights.items()}


def write_clip(path: Path, photos: Path | None) -> str:
    """A short pan-and-zoom clip over a photo (or a drawn gradient), encoded with PyAV as LoadVideo reads it."""
    import av
    from PIL import Image

    source = Image.open(photos / "boat.jpg").convert("RGB") if photos is not None and (photos / "boat.jpg").is_file() else None
    if source is None:
        picture = torch.linspace(0, 1, 256).expand(3, 192, 256).clone()
        picture[1] = picture[1].flip(-1)
    else:
        picture = torch.frombuffer(bytearray(source.tobytes()), dtype=torch.uint8).reshape(source.height, source.width, 3)
        picture = picture.permute(2, 0, 1).float() / 255
    frames = (pan_zoom_clip(picture, CLIP_FRAMES, *CLIP_SIZE) * 255).round().to(torch.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=CLIP_FPS)
        stream.height, stream.width = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(stream.encode())
    return path.name


def standard_projection(generator: torch.Generator, tokens: int = 4) -> dict[str, torch.Tensor]:
    """IP-Adapter's ImageProjModel: CLIP image_embeds -> ``tokens`` context tokens."""
    embeds = CLIP_VISION["projection_dim"]
    return {"proj.weight": torch.randn(tokens * CONTEXT_DIM, embeds, generator=generator) / math.sqrt(embeds),
            "proj.bias": torch.zeros(tokens * CONTEXT_DIM), "norm.weight": torch.ones(CONTEXT_DIM),
            "norm.bias": torch.zeros(CONTEXT_DIM)}


def resampler_projection(generator: torch.Generator, queries: int, depth: int = 2) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus' Perceiver resampler over CLIP's penultimate hidden states (64-d heads; released ones are 4 deep)."""
    width, hidden = CONTEXT_DIM, CLIP_VISION["hidden_size"]
    rand = lambda *shape: torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])
    proj = {"latents": torch.randn(1, queries, width, generator=generator) / math.sqrt(width),
            "proj_in.weight": rand(width, hidden), "proj_in.bias": torch.zeros(width),
            "proj_out.weight": rand(width, width), "proj_out.bias": torch.zeros(width),
            "norm_out.weight": torch.ones(width), "norm_out.bias": torch.zeros(width)}
    for i in range(depth):
        p = f"layers.{i}."
        proj |= {p + "0.norm1.weight": torch.ones(width), p + "0.norm1.bias": torch.zeros(width),
                 p + "0.norm2.weight": torch.ones(width), p + "0.norm2.bias": torch.zeros(width),
                 p + "0.to_q.weight": rand(width, width), p + "0.to_kv.weight": rand(2 * width, width),
                 p + "0.to_out.weight": rand(width, width), p + "1.0.weight": torch.ones(width),
                 p + "1.0.bias": torch.zeros(width), p + "1.1.weight": rand(4 * width, width),
                 p + "1.3.weight": rand(width, 4 * width)}
    return proj


def ip_layers(generator: torch.Generator, unet: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """``{2i+1}.to_{k,v}_ip.weight`` for the i-th cross-attention layer in diffusers order (down, up, mid)."""
    attn2 = [k for k in unet if k.endswith("attn2.to_k.weight")]
    part = lambda key: ("input_blocks", "output_blocks", "middle_block").index(key.split(".")[2])
    block = lambda key: int(key.split(".")[3]) if "middle_block" not in key else 0
    ordered = sorted(attn2, key=lambda k: (part(k), block(k)))
    out = {}
    for i, key in enumerate(ordered):
        inner = unet[key][0]
        for which in "kv":
            out[f"{2 * i + 1}.to_{which}_ip.weight"] = torch.randn(inner, CONTEXT_DIM, generator=generator) / math.sqrt(CONTEXT_DIM)
    return out


def write(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path.name


def write_pictures(folder: Path, photos: Path | None) -> list[str]:
    """Content and style pictures (longer side 96 px; the shared photos when present, else gradients) and a mask."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in IMAGES.items():
        if photos is not None and (photos / photo).is_file():
            picture = Image.open(photos / photo).convert("RGB")
            picture.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
        else:
            ramp, height = torch.linspace(0, 255, IMAGE_SIDE).to(torch.uint8), IMAGE_SIDE * 2 // 3
            pixels = torch.stack([ramp.expand(height, -1), ramp.flip(0).expand(height, -1),
                                  torch.full((height, IMAGE_SIDE), 128, dtype=torch.uint8)], -1)
            picture = Image.fromarray(pixels.numpy())
        picture.save(folder / name)
    width, height = Image.open(folder / "boat.jpg").size  # the mask is drawn on the content picture
    mask = torch.zeros(height, width, 3, dtype=torch.uint8)
    mask[:, : width // 2, 0] = 255  # LoadImageMask reads the red channel: the left half is white
    Image.fromarray(mask.numpy()).save(folder / MASK)
    example = Image.open(COMFYUI_EXAMPLE).convert("RGB")  # every ComfyUI ships it in input/: templates may rely on it
    example.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    example.save(folder / COMFYUI_EXAMPLE.name)
    return sorted([*IMAGES, MASK, COMFYUI_EXAMPLE.name])


def main(base: Path, photos: Path | None) -> dict:
    start = time.perf_counter()
    models = base / "models"
    generator = torch.Generator().manual_seed(0)
    unet = unet_shapes()
    checkpoint = {**random_weights(unet, 1), **random_weights(clip_text_shapes(), 2),
                  **random_weights(vae_shapes("first_stage_model."), 3)}
    detected = comfy.model_detection.model_config_from_unet(checkpoint, "model.diffusion_model.")
    files = {
        "checkpoints": [write(models / "checkpoints" / "sd15_standin.safetensors", checkpoint)],
        "vae": [write(models / "vae" / "sd_vae_standin.safetensors", random_weights(vae_shapes(), 4))],
        "controlnet": [write(models / "controlnet" / "controlnet_sd15_standin.safetensors", random_weights(controlnet_shapes(), 5))],
        "clip_vision": [write(models / "clip_vision" / "clip_vision_vitl_standin.safetensors", random_weights(clip_vision_shapes(), 6))],
    }
    del checkpoint
    layers = ip_layers(generator, unet)
    standard = {"image_proj": standard_projection(generator), "ip_adapter": layers}
    csgo = {"content_image_proj": standard_projection(generator), "style_image_proj": resampler_projection(generator, queries=32),
            "ip_adapter": layers}
    half = lambda groups: {g: {k: v.half() for k, v in group.items()} for g, group in groups.items()}
    files["ipadapter"] = [write(models / "ipadapter" / "ip-adapter_sd15_standin.safetensors",
                                {f"{g}.{k}": v for g, group in half(standard).items() for k, v in group.items()})]
    torch.save(half(csgo), models / "ipadapter" / "csgo_sd15_standin.bin")
    files["ipadapter"].append("csgo_sd15_standin.bin")
    # The default encoder's folder name, so "google/siglip-base-patch16-224" resolves to it offline;
    # a second SigLIP of the same width plays "another encoder".
    siglip = [DEFAULT_TEXT_ENCODER.split("/")[-1], "other-siglip"]
    for name in siglip:
        build_tiny_siglip(models / "siglip" / name)
    files["siglip"] = siglip
    style_mamba = new_style_mamba(tiny_config(style_dim=TINY_EMBED_DIM), text_encoder=DEFAULT_TEXT_ENCODER)
    style_mamba.model = trained_like(style_mamba.config)
    files["stylemamba"] = [save_checkpoint(style_mamba, models / "stylemamba" / "van_gogh_00001.safetensors").name]
    # Video: a 16-channel (Wan 2.1) StyleMamba with its temporal mixers opened, the Wan 2.1 VAE and a clip.
    video_mamba = new_style_mamba(tiny_config(latent_channels=16, style_dim=TINY_EMBED_DIM), text_encoder=DEFAULT_TEXT_ENCODER)
    video_mamba.model = trained_like(video_mamba.config)
    with torch.no_grad():
        for mixer in video_mamba.model.temporal:
            mixer.out_proj.weight.normal_(std=0.2, generator=generator)
    files["stylemamba"].append(save_checkpoint(video_mamba, models / "stylemamba" / "wan_video_style_00001.safetensors").name)
    files["vae"].append(write(models / "vae" / "wan_2.1_vae_standin.safetensors", wan_vae_weights(7)))
    files["input"] = [*write_pictures(base / "input", photos), write_clip(base / "input" / CLIP, photos)]
    flux, sd35 = write_flux(models), write_sd35(models)
    for folder, names in (*flux.pop("files").items(), *sd35.pop("files").items()):
        files.setdefault(folder, []).extend(names)
    return {"files": files, "sd15_detected_as": type(detected).__name__ if detected else None,
            "unet_parameters": sum(math.prod(s) for s in unet.values()), **flux, **sd35,
            "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(result))
