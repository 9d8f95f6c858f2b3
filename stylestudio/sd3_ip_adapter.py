"""InstantX's SD3.5-Large IP-Adapter: read the file, resample SigLIP features with the timestep, and its per-block IP branch.

The file (``ip-adapter.bin`` of InstantX/SD3.5-Large-IP-Adapter; key names as diffusers' SD3 loader reads them):

* ``image_proj.*``: a Resampler conditioned on the timestep: ``latents``, ``proj_in``, ``proj_out``, ``norm_out``,
  ``time_embedding.linear_{1,2}`` and per layer ``layers.i.0.{norm1,norm2,to_q,to_kv,to_out}``, ``layers.i.1.{0,1,3}``
  (LayerNorm and feed-forward) and ``layers.i.2.1`` (the shift/scale projection of the time embedding);
* ``ip_adapter.n.*`` for every joint block ``n``: ``norm_ip.linear`` (an adaptive LayerNorm of the image tokens driven by
  the Resampler's time embedding), ``to_k_ip``/``to_v_ip``, and the per-head RMSNorms ``norm_q``, ``norm_k``, ``norm_ip_k``.

The IP branch of a joint block (for the image rows; text rows untouched) is

    B = attn(norm_q(q_img), [norm_k(k_img) | norm_ip_k(K_ip)], [v_img | V_ip]),   plain adapter: J + scale · B

with ``q_img, k_img, v_img`` the image tokens' own projections before the block's q/k norm (the node uses scale 1).
ComfyUI's MMDiT hands the attention the queries/keys *after* its RMSNorm; RMSNorm forgets the scale of its input, so
the adapter's norm of the raw query is the block's normed query times ``w_adapter / w_block`` (same eps, 1e-6, in
both): exact, nothing recomputed. Cross-modal AdaIN takes its statistics from ``S = attn(norm_q(q_img), norm_ip_k(K_ip),
V_ip)``, the branch's attention over the IP keys alone: ``B`` also attends to the image's own keys, whose statistics are
the content's, not the style's (``styled = w_C·AdaIN(A_text, S) + w_X·A_X``, lerped from ``J + B`` by strength).

The Resampler's timestep is the one SD3 passes its diffusion model, ``1000 · sigma`` (diffusers' scheduler timesteps).
Image features are SigLIP so400m's penultimate hidden states; without a negative style image the unconditional half
reads all-zero features, as in diffusers' SD3 pipeline.
"""

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapter_files import Groups, IPAdapterError, Layout
from .attention import Attend, merge_heads, rms_norm, split_heads
from .dit import ATTENTION, ImageBranch
from .dit_blocks import DiTBlock, mmdit_blocks
from .hooks import NEGATIVE
from .image_projection import perceiver_resample, resampler_depth, resampler_keys
from .tensor_group import TensorGroup

LAYOUT = "instantx-sd3.5"
SIGLIP = "SigLIP so400m (sigclip_vision_patch14_384, 1152-wide penultimate hidden states)"
TIMESTEPS = 1000  # SD3's flow timestep is 1000·sigma: ComfyUI's ModelSamplingDiscreteFlow multiplier, diffusers' scheduler
_BLOCK_KEYS = {"norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight",
               "norm_q.weight", "norm_k.weight", "norm_ip_k.weight"}
_TIME_KEYS = {"time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
              "time_embedding.linear_2.weight", "time_embedding.linear_2.bias"}
_TIME_LAYER_KEYS = {"2.1.weight", "2.1.bias"}  # each Resampler layer's shift/scale projection of the time embedding
_NORM_EPS = 1e-6  # norm_ip's LayerNorm and the RMSNorms


@dataclass(frozen=True)
class SD3IPAdapter:
    """The validated weights: the time-conditioned Resampler and, per joint block, the IP branch (a ``DiTAdapter``)."""

    name: str
    image_proj: dict[str, Tensor]
    blocks: dict[int, dict[str, Tensor]]  # joint block index -> the keys of _BLOCK_KEYS
    layout: str = LAYOUT

    @property
    def feature_dim(self) -> int:
        """Width of the CLIP-vision features it reads (SigLIP so400m: 1152)."""
        return self.image_proj["proj_in.weight"].shape[1]

    @property
    def width(self) -> int:
        """The model width its keys/values have (SD3.5 Large: 2432 = 38 heads of 64)."""
        return self.blocks[0]["to_k_ip.weight"].shape[0]

    @property
    def head_dim(self) -> int:
        return self.blocks[0]["norm_q.weight"].shape[0]

    @cached_property
    def sampling_weights(self) -> "SD3Weights":
        """Every tensor sampling reads, in one module (sharing the file's tensors until it is moved): the node has ComfyUI
        load, count and offload it with the MODEL (SD3.5 Large: the 38 × 2 × 2432² key/value weights alone are 0.9 GB in bf16)."""
        return SD3Weights(self.image_proj, [self.blocks[index] for index in range(len(self.blocks))])

    def model_blocks(self, diffusion_model: nn.Module) -> list[DiTBlock]:
        return mmdit_blocks(diffusion_model)

    def check_model(self, diffusion_model: nn.Module) -> None:
        """Raise unless the MODEL is an MM-DiT of the adapter's width, head width and depth, with RMS (or no) q/k norm."""
        blocks, width, heads = len(mmdit_blocks(diffusion_model)), diffusion_model.hidden_size, diffusion_model.num_heads
        if (width, blocks) != (self.width, len(self.blocks)) or width // heads != self.head_dim:
            raise IPAdapterError(
                f"IP-Adapter {self.name!r} ({self.layout}) is for an MM-DiT {self.width} wide with {len(self.blocks)} joint "
                f"blocks of {self.head_dim}-wide heads (SD3.5 Large: 2432, 38, 64), but this MODEL is {width} wide with "
                f"{blocks} joint blocks of {width // heads}-wide heads: InstantX's SD3.5 IP-Adapter fits SD3.5 Large only."
            )
        if any(getattr(joint.x_block.attn.ln_q, "bias", None) is not None for joint in diffusion_model.joint_blocks):
            raise IPAdapterError(f"IP-Adapter {self.name!r} ({self.layout}) fits MM-DiTs with RMSNorm (SD3.5) or no q/k norm; "
                                 "this MODEL normalises queries/keys with a LayerNorm.")

    def check_features(self, features: Tensor) -> None:
        if features.ndim != 3 or features.shape[-1] != self.feature_dim:
            raise IPAdapterError(
                f"clip_vision gives penultimate hidden states of shape {tuple(features.shape)}, but IP-Adapter {self.name!r} "
                f"({self.layout}) reads {self.feature_dim}-wide ones: load {SIGLIP}."
            )

    def tokens(self, clip_output: Any) -> Tensor:
        """The style images' SigLIP penultimate hidden states ``(images, patches, 1152)``, checked; the Resampler that
        turns them into IP tokens needs the step's timestep and runs during sampling (``SD3Tokens``)."""
        features = clip_output["penultimate_hidden_states"].float().cpu()
        self.check_features(features)
        return features

    def branches(self, positive: Tensor, negative: Tensor, diffusion_model: nn.Module) -> dict[DiTBlock, ImageBranch]:
        """Every joint block's IP branch. ``negative is positive`` (no negative style image): the unconditional half reads
        all-zero features, as diffusers' SD3 pipeline gives it."""
        self.check_model(diffusion_model)
        weights = self.sampling_weights
        tokens = SD3Tokens(weights.resampler, positive, torch.zeros_like(positive) if negative is positive else negative)
        out = {}
        for block, joint in zip(mmdit_blocks(diffusion_model), diffusion_model.joint_blocks):
            group = weights.blocks[block[1]]
            out[block] = ImageBranch(SD3BlockKV(tokens, group), ATTENTION, combine=SD3Combine(group, joint.x_block.attn))
        return out


def is_sd3_layout(groups: Groups) -> bool:
    """Whether a file read by ``read_state_dict`` has InstantX's SD3.5 layout (a per-block ``norm_ip``)."""
    return any(key.endswith(".norm_ip.linear.weight") for key in groups.get("ip_adapter", {}))


def parse_sd3_ip_adapter(groups: Groups, name: str) -> SD3IPAdapter:
    """Check every key and shape the Resampler and the IP branch rely on, in a file ``is_sd3_layout`` recognised."""
    proj = groups.get("image_proj", {})
    depth = resampler_depth(proj)
    expected = resampler_keys(depth, top=_TIME_KEYS, per_layer=_TIME_LAYER_KEYS)
    if depth == 0 or set(proj) != expected:
        raise IPAdapterError(f"{name!r}: its image projection is not the SD3.5 time-conditioned Resampler "
                             f"(keys that differ: {sorted(set(proj) ^ expected)[:6]})")
    blocks: dict[int, dict[str, Tensor]] = {}
    for key, tensor in groups["ip_adapter"].items():
        index, rest = key.split(".", 1)
        if not index.isdigit() or rest not in _BLOCK_KEYS:
            raise IPAdapterError(f"{name!r}: unexpected per-block weight 'ip_adapter.{key}' in an SD3.5 IP-Adapter")
        blocks.setdefault(int(index), {})[rest] = tensor
    if sorted(blocks) != list(range(len(blocks))) or any(set(b) != _BLOCK_KEYS for b in blocks.values()):
        raise IPAdapterError(f"{name!r}: the per-block weights are incomplete (blocks {sorted(blocks)[:8]}...)")
    adapter = SD3IPAdapter(name, proj, blocks)
    _check_widths(adapter)
    return adapter


def _check_widths(adapter: SD3IPAdapter) -> None:
    proj, width, head = adapter.image_proj, adapter.width, adapter.head_dim
    time_width = proj["time_embedding.linear_2.weight"].shape[0]
    for index, block in adapter.blocks.items():
        shapes = {"to_k_ip": block["to_k_ip.weight"].shape, "to_v_ip": block["to_v_ip.weight"].shape,
                  "norm_ip.linear": block["norm_ip.linear.weight"].shape,
                  "norms": tuple(block[k].shape[0] for k in ("norm_q.weight", "norm_k.weight", "norm_ip_k.weight"))}
        wanted = {"to_k_ip": (width, width), "to_v_ip": (width, width), "norm_ip.linear": (2 * width, time_width),
                  "norms": (head, head, head)}
        if shapes != wanted or width % head:
            raise IPAdapterError(f"{adapter.name!r}: block {index} has shapes {shapes}, expected {wanted} "
                                 f"(the Resampler's tokens and time embedding must fit every block)")
    if proj["proj_out.weight"].shape[0] != width:
        raise IPAdapterError(f"{adapter.name!r}: the Resampler makes {proj['proj_out.weight'].shape[0]}-wide tokens, "
                             f"its blocks read {width}-wide ones")


def timestep_embedding(timestep: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``(N, dim)`` in cos-then-sin order, frequencies ``max_period^(-i / (dim/2))`` (the Resampler's)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * frequencies
    return F.pad(torch.cat((angles.cos(), angles.sin()), dim=-1), (0, dim % 2))


def resample(image_proj: dict[str, Tensor], features: Tensor, timestep: Tensor) -> tuple[Tensor, Tensor]:
    """SigLIP penultimate hidden states ``(n, patches, 1152)`` at ``timestep`` ``(n,)`` -> IP tokens ``(n, queries, width)``
    and the time embedding ``(n, hidden)`` the blocks' ``norm_ip`` reads, in the weights' dtype on ``features``' device
    (weights already there, as ComfyUI loads them with the MODEL: nothing is copied)."""
    p = {key: value.to(features.device) for key, value in image_proj.items()}
    dtype = p["latents"].dtype
    t = timestep_embedding(timestep.to(features.device), p["time_embedding.linear_1.weight"].shape[1]).to(dtype)
    t = F.linear(F.silu(F.linear(t, p["time_embedding.linear_1.weight"], p["time_embedding.linear_1.bias"])),
                 p["time_embedding.linear_2.weight"], p["time_embedding.linear_2.bias"])
    return perceiver_resample(p, features.to(dtype), t), t


def block_keys_values(block: dict[str, Tensor], tokens: Tensor, time_emb: Tensor) -> tuple[Tensor, Tensor]:
    """One block's IP keys (after ``norm_ip_k``) and values, ``(B, H, N, D)``, from tokens ``(B, N, width)`` and time ``(B, hidden)``.

    ``norm_ip`` is an adaptive LayerNorm without affine weights: shift and scale (in that order) come from the time embedding.
    """
    w = {key: value.to(tokens.device, tokens.dtype) for key, value in block.items()}
    shift, scale = F.linear(F.silu(time_emb.to(tokens.dtype)), w["norm_ip.linear.weight"], w["norm_ip.linear.bias"]).chunk(2, dim=-1)
    normed = torch.addcmul(shift[:, None], F.layer_norm(tokens, tokens.shape[-1:], eps=_NORM_EPS), 1 + scale[:, None])
    head_dim = w["norm_q.weight"].shape[0]
    k = rms_norm(split_heads(F.linear(normed, w["to_k_ip.weight"]), head_dim=head_dim), _NORM_EPS, w["norm_ip_k.weight"])
    return k, split_heads(F.linear(normed, w["to_v_ip.weight"]), head_dim=head_dim)


def adapter_norm(x: Tensor, adapter_weight: Tensor, block_weight: Tensor | None) -> Tensor:
    """The adapter's RMSNorm of a raw query/key ``(B, H, L, D)``, given it as the block has normed it already.

    ``block_weight``: the block's RMSNorm weight, or None where the block has no q/k norm (SD3 Medium); a weightless RMSNorm
    is covered by the None case too, up to its eps. (A block weight of exactly 0 would lose its channel; trained ones have none.)
    """
    adapter_weight = adapter_weight.to(x.device, x.dtype)
    if block_weight is None:
        return rms_norm(x, _NORM_EPS, adapter_weight)
    return x * (adapter_weight / block_weight.to(x.device, x.dtype))


def ip_branch(q_img: Tensor, k_img: Tensor, v_img: Tensor, k_ip: Tensor, v_ip: Tensor, block: dict[str, Tensor],
              block_norms: tuple[Tensor | None, Tensor | None], attend: Attend) -> tuple[Tensor, Tensor]:
    """The IP branch ``B`` of one joint block for the image rows, and its style part ``attn(norm_q(q_img), K_ip, V_ip)``.

    All tensors ``(B, H, L, D)``; ``q_img``/``k_img`` as the block hands them to attention (after its own q/k norm).
    """
    q = adapter_norm(q_img, block["norm_q.weight"], block_norms[0])
    k = adapter_norm(k_img, block["norm_k.weight"], block_norms[1])
    k_ip, v_ip = k_ip.to(q.dtype), v_ip.to(q.dtype)
    branch = attend(q, torch.cat((k, k_ip), dim=2), torch.cat((v_img, v_ip), dim=2))
    return branch, attend(q, k_ip, v_ip)


class SD3Weights(nn.Module):
    """What the SD3.5 branch reads every step: the Resampler and each joint block's ``norm_ip``/``to_k_ip``/``to_v_ip`` and
    RMSNorm weights, one ``TensorGroup`` each, so ComfyUI's model management can place them like its own models' weights."""

    def __init__(self, image_proj: dict[str, Tensor], blocks: list[dict[str, Tensor]]) -> None:
        super().__init__()
        self.resampler = TensorGroup(image_proj)
        self.blocks = nn.ModuleList(TensorGroup(block) for block in blocks)


class SD3Tokens:
    """The Resampler's IP tokens ``(1, images·queries, width)`` and time embedding ``(1, hidden)`` for the current step.

    Computed once per CFG half and timestep for all blocks, and again when the timestep changes (the
    Resampler reads it; the old step's tokens are dropped then); several style images' tokens sit side by side,
    attended together.
    """

    def __init__(self, resampler: TensorGroup, positive: Tensor, negative: Tensor) -> None:
        self.resampler, self.features = resampler, (positive, negative)
        self.cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def get(self, half: int, sigmas: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        timestep = sigmas[:1].float().to(device) * TIMESTEPS
        key = (half, float(timestep), device)
        if key not in self.cache:
            if any(k[1:] != key[1:] for k in self.cache):
                self.cache.clear()  # a new step: the old one's tokens are done with
            features = self.features[1 if half == NEGATIVE else 0].to(device)
            tokens, time_emb = resample(self.resampler.tensors(), features, timestep.expand(features.shape[0]))
            self.cache[key] = tokens.flatten(0, 1)[None], time_emb[:1]
        return self.cache[key]


@dataclass(frozen=True, eq=False)
class SD3BlockKV:
    """``ImageKV`` of one joint block: ``norm_ip`` (with the step's time embedding), ``to_k_ip``/``norm_ip_k`` and ``to_v_ip``,
    read where ComfyUI put them (cast only if the model computes in another dtype than they are stored in)."""

    tokens: SD3Tokens
    weights: TensorGroup

    def __call__(self, half: int, rows: slice, args: dict, like: Tensor) -> tuple[Tensor, Tensor]:
        sigmas = (args.get("transformer_options") or {}).get("sigmas")
        if sigmas is None:
            raise ValueError("The SD3.5 IP-Adapter needs the step's sigma (transformer_options['sigmas']) for its Resampler")
        tokens, time_emb = self.tokens.get(half, sigmas, like.device)
        k, v = block_keys_values(self.weights.tensors(), tokens.to(like.dtype), time_emb.to(like.dtype))
        return merge_heads(k), merge_heads(v)


@dataclass(frozen=True, eq=False)
class SD3Combine:
    """``BranchCombine`` of one joint block: ``(B, attn(norm_q(q_img), K_ip, V_ip))`` (see ``ip_branch``).

    ``attention`` is the block's image-stream attention module; its q/k RMSNorm weights are read at
    call time, so weights ComfyUI patches in (LoRA) are the ones used.
    """

    weights: TensorGroup
    attention: nn.Module

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, k_ip: Tensor, v_ip: Tensor, attend: Attend) -> tuple[Tensor, Tensor]:
        norms = (getattr(self.attention.ln_q, "weight", None), getattr(self.attention.ln_k, "weight", None))
        return ip_branch(q, k, v, k_ip, v_ip, self.weights.tensors(), norms, attend)


#: What ``dit_adapters.load_dit_adapter`` reads as an SD3.5 IP-Adapter.
LAYOUTS: dict[str, Layout] = {
    LAYOUT: Layout(is_sd3_layout, parse_sd3_ip_adapter, f"SD3.5 Large: InstantX SD3.5-Large-IP-Adapter, ip-adapter.bin, with {SIGLIP}"),
}
