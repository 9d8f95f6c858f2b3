"""IP-Adapters for Flux.1: read the file, recognise its layout, check it against the MODEL and CLIP vision, build the branches.

Two public layouts (key names and formulas as diffusers' Flux IP-Adapter loader and the released ComfyUI ports read them):

* **XLabs** ``flux-ip-adapter`` (CLIP ViT-L/14 ``image_embeds``, 768-wide): ``ip_adapter_proj_model.{proj,norm}.*``
  projects the embedding to a few 4096-wide tokens (``proj`` then a LayerNorm per token); every double block ``i`` has
  ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}``. The branch
  ``attn(q_img, K_ip, V_ip)`` (image query before RoPE) is added to the image stream *after* the block, past its
  output projection, gate and MLP (diffusers' ``FluxTransformerBlock``: ``hidden_states + ip_attn_output``).
* **InstantX** ``FLUX.1-dev-IP-Adapter`` (SigLIP so400m ``image_embeds``, 1152-wide): ``image_proj.proj.{0,2}.*`` (an
  MLP with exact GELU) and ``image_proj.norm.*`` make 128 tokens; ``ip_adapter.{n}.to_{k,v}_ip.weight`` (no bias) for
  block ``n`` counting the double blocks first, then the single blocks (Flux.1: 19 + 38). Keys and values are
  RMS-normalised per head (eps 1e-5, no weight; the value norm as in the Shakker-Labs/InstantX ComfyUI node), and the
  branch is added to the attention output before the block's projection: for the image queries in double blocks, for
  every query (text too) in single blocks.

``LAYOUTS`` tells ``dit_adapters.load_dit_adapter`` how to recognise and load both.
"""

import re
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .adapter_files import Groups, IPAdapterError, Layout
from .attention import rms_norm
from .dit import ATTENTION, RESIDUAL, FixedImageKV, ImageBranch
from .dit_blocks import DiTBlock, flux_blocks
from .image_projection import norm_tokens

CLIP_VIT_L = "CLIP ViT-L/14 (clip_vision_l / openai clip-vit-large-patch14, 768-wide image embeddings)"
SIGLIP = "SigLIP so400m (sigclip_vision_patch14_384, 1152-wide image embeddings)"
_XLABS_BLOCK_KEY = re.compile(r"^(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
_INSTANTX_LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_XLABS_PROJ = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
_INSTANTX_PROJ = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
_RMS_EPS = 1e-5


@dataclass(frozen=True)
class FluxLayout:
    """What differs between the Flux adapters besides their key names."""

    name: str
    clip_vision: str  # the CLIP vision it reads, for messages
    into: str  # ATTENTION or RESIDUAL: where the branch is added
    single_blocks: bool  # weights for the single blocks too (after the double blocks)
    rms_kv: bool  # keys and values RMS-normalised per head


XLABS = FluxLayout("xlabs-flux", CLIP_VIT_L, RESIDUAL, single_blocks=False, rms_kv=False)
INSTANTX = FluxLayout("instantx-flux", SIGLIP, ATTENTION, single_blocks=True, rms_kv=True)


class FluxStyleKV(nn.Module):
    """Every block's style keys/values of one prompt, one ``TensorGroup`` per block (the unit ComfyUI's low-VRAM mode loads or
    leaves offloaded): InstantX's 57 blocks × (K, V) × 128 tokens × 3072 are 90 MB per style image in bf16, which ComfyUI
    counts, loads with the MODEL and offloads like the MODEL's own weights."""

    def __init__(self, blocks: list[FixedImageKV]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(kv.group for kv in blocks)


@dataclass(eq=False)
class FluxIPAdapter:
    """A validated Flux IP-Adapter: its image projection and per-block key/value weights (and biases, XLabs).

    ``sampling_weights``: the keys/values the last ``branches`` call projected (its branches read them), None before.
    """

    name: str
    kind: FluxLayout
    image_proj: dict[str, Tensor]
    blocks: list[tuple[Tensor, Tensor | None, Tensor, Tensor | None]]  # k weight, k bias, v weight, v bias
    sampling_weights: FluxStyleKV | None = field(default=None, init=False, repr=False)

    @property
    def layout(self) -> str:
        return self.kind.name

    @property
    def mlp(self) -> bool:
        """InstantX projects through a two-layer MLP, XLabs through one linear layer."""
        return "proj.0.weight" in self.image_proj

    @property
    def feature_dim(self) -> int:
        return self.image_proj["proj.0.weight" if self.mlp else "proj.weight"].shape[1]

    @property
    def width(self) -> int:
        """The model width its keys/values are made for (Flux.1: 3072)."""
        return self.blocks[0][0].shape[0]

    def model_blocks(self, diffusion_model: nn.Module) -> list[DiTBlock]:
        return flux_blocks(diffusion_model)

    def check_model(self, diffusion_model: nn.Module) -> None:
        blocks = flux_blocks(diffusion_model)
        expected = len(blocks) if self.kind.single_blocks else sum(kind == "double_block" for kind, _ in blocks)
        if diffusion_model.hidden_size != self.width:
            raise IPAdapterError(
                f"IP-Adapter {self.name!r} ({self.layout}) makes {self.width}-wide keys/values but this MODEL's blocks are "
                f"{diffusion_model.hidden_size} wide: the adapter belongs to another model (Flux.1 is 3072 wide)")
        if len(self.blocks) != expected:
            which = "double + single blocks" if self.kind.single_blocks else "double blocks"
            raise IPAdapterError(
                f"IP-Adapter {self.name!r} ({self.layout}) has weights for {len(self.blocks)} {which}, this MODEL has "
                f"{expected}: the adapter belongs to another Flux-class model")

    def tokens(self, clip_output: Any) -> Tensor:
        features = clip_output["image_embeds"].float().cpu()
        if features.ndim != 2 or features.shape[-1] != self.feature_dim:
            raise IPAdapterError(
                f"clip_vision gives {features.shape[-1]}-wide image embeddings but IP-Adapter {self.name!r} ({self.layout}) "
                f"reads {self.feature_dim}-wide ones: load {self.kind.clip_vision}")
        p = {k: v.float() for k, v in self.image_proj.items()}
        if self.mlp:
            flat = F.linear(F.gelu(F.linear(features, p["proj.0.weight"], p["proj.0.bias"])), p["proj.2.weight"], p["proj.2.bias"])
        else:
            flat = F.linear(features, p["proj.weight"], p["proj.bias"])
        return norm_tokens(flat, p["norm.weight"], p["norm.bias"]).flatten(0, 1).unsqueeze(0)

    def branches(self, positive: Tensor, negative: Tensor, diffusion_model: nn.Module) -> dict[DiTBlock, ImageBranch]:
        """Project both token sets once per block (float32, on the CPU) into ``sampling_weights``: sampling steps only attend
        to them, wherever ComfyUI put them. ``negative is positive`` (no negative style image): projected once, shared."""
        self.check_model(diffusion_model)
        head_dim = diffusion_model.hidden_size // diffusion_model.num_heads
        kvs = {}
        for block, weights in zip(flux_blocks(diffusion_model), self.blocks):
            k, v = self._keys_values(positive, weights, head_dim)
            kvs[block] = FixedImageKV.holding(k, v, None if negative is positive else self._keys_values(negative, weights, head_dim))
        self.sampling_weights = FluxStyleKV(list(kvs.values()))
        return {block: ImageBranch(kv, self.kind.into, text_rows=self.kind.into == ATTENTION and block[0] == "single_block")
                for block, kv in kvs.items()}

    def _keys_values(self, tokens: Tensor, weights: tuple[Tensor, Tensor | None, Tensor, Tensor | None],
                     head_dim: int) -> tuple[Tensor, Tensor]:
        k_w, k_b, v_w, v_b = weights
        return self._project(tokens, k_w, k_b, head_dim), self._project(tokens, v_w, v_b, head_dim)

    def _project(self, tokens: Tensor, weight: Tensor, bias: Tensor | None, head_dim: int) -> Tensor:
        x = F.linear(tokens.float(), weight.float(), None if bias is None else bias.float())
        if not self.kind.rms_kv:
            return x
        return rms_norm(x.unflatten(-1, (-1, head_dim)), _RMS_EPS).flatten(-2)


def is_xlabs(groups: Groups) -> bool:
    return "ip_adapter_proj_model" in groups


def is_instantx_flux(groups: Groups) -> bool:
    return "proj.0.weight" in groups.get("image_proj", {}) and "ip_adapter" in groups


def load_xlabs(groups: Groups, name: str) -> FluxIPAdapter:
    proj = _checked_projection(groups["ip_adapter_proj_model"], _XLABS_PROJ, name, "XLabs", "ip_adapter_proj_model")
    found: dict[int, dict[str, Tensor]] = {}
    for key, tensor in groups.get("double_blocks", {}).items():
        match = _XLABS_BLOCK_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"{name!r}: unexpected weight 'double_blocks.{key}' in an XLabs Flux IP-Adapter")
        found.setdefault(int(match[1]), {})[f"{match[2]}_{match[3]}"] = tensor
    blocks = [(layer.get("k_weight"), layer.get("k_bias"), layer.get("v_weight"), layer.get("v_bias"))
              for _, layer in sorted(found.items())]
    _check_blocks(blocks, sorted(found), proj["norm.weight"].shape[0], name, with_bias=True)
    return FluxIPAdapter(name, XLABS, proj, blocks)


def load_instantx_flux(groups: Groups, name: str) -> FluxIPAdapter:
    proj = _checked_projection(groups["image_proj"], _INSTANTX_PROJ, name, "InstantX", "image_proj")
    found: dict[int, dict[str, Tensor]] = {}
    for key, tensor in groups["ip_adapter"].items():
        match = _INSTANTX_LAYER_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"{name!r}: unexpected weight 'ip_adapter.{key}' in an InstantX Flux IP-Adapter")
        found.setdefault(int(match[1]), {})[match[2]] = tensor
    blocks = [(layer.get("k"), None, layer.get("v"), None) for _, layer in sorted(found.items())]
    _check_blocks(blocks, sorted(found), proj["norm.weight"].shape[0], name, with_bias=False)
    return FluxIPAdapter(name, INSTANTX, proj, blocks)


def _checked_projection(proj: dict[str, Tensor], expected: set[str], name: str, maker: str, group: str) -> dict[str, Tensor]:
    if set(proj) != expected:
        odd = sorted(set(proj) ^ expected)[:6]
        raise IPAdapterError(f"{name!r}: the {maker} Flux IP-Adapter image projection '{group}' has unexpected or missing keys {odd}")
    last = proj["proj.weight" if "proj.weight" in proj else "proj.2.weight"]
    if last.shape[0] % proj["norm.weight"].shape[0]:
        raise IPAdapterError(f"{name!r}: image projection output {last.shape[0]} is not a multiple of its token width "
                             f"{proj['norm.weight'].shape[0]}")
    return proj


def _check_blocks(blocks: list[tuple[Tensor | None, ...]], indices: list[int], token_width: int, name: str, with_bias: bool) -> None:
    if not blocks:
        raise IPAdapterError(f"{name!r} has image projection weights but no per-block key/value weights")
    if indices != list(range(len(indices))):
        raise IPAdapterError(f"{name!r}: per-block weights for blocks {indices[:4]}...{indices[-2:]} are not numbered 0-{len(indices) - 1}")
    for index, (k_w, k_b, v_w, v_b) in enumerate(blocks):
        if any(t is None for t in ((k_w, k_b, v_w, v_b) if with_bias else (k_w, v_w))):
            raise IPAdapterError(f"{name!r}: block {index} lacks some of its key/value {'weights and biases' if with_bias else 'weights'}")
    width = blocks[0][0].shape[0]
    for index, (k_w, k_b, v_w, v_b) in enumerate(blocks):
        if k_w.ndim != 2 or k_w.shape != (width, token_width) or v_w.shape != k_w.shape:
            raise IPAdapterError(f"{name!r}: block {index} key/value weights {tuple(k_w.shape)} / {tuple(v_w.shape)} do not map "
                                 f"the {token_width}-wide image tokens to the {width} channels of block 0")
        if with_bias and (k_b.shape != (width,) or v_b.shape != (width,)):
            raise IPAdapterError(f"{name!r}: block {index} key/value biases {tuple(k_b.shape)} / {tuple(v_b.shape)} are not {width}-wide")


#: What ``dit_adapters.load_dit_adapter`` reads as a Flux IP-Adapter.
LAYOUTS: dict[str, Layout] = {
    XLABS.name: Layout(is_xlabs, load_xlabs, f"Flux.1: XLabs flux-ip-adapter with {CLIP_VIT_L}"),
    INSTANTX.name: Layout(is_instantx_flux, load_instantx_flux, f"Flux.1: InstantX FLUX.1-dev-IP-Adapter with {SIGLIP}"),
}
