"""VCT (Visual Concept Translator, arXiv 2307.14352) nodes: concept inversion, content inversion, fusion.

Thin adapter: ComfyUI's MODEL/CLIP/VAE in, the pure-torch core in ``vct`` does the work. The UNet is called through
``BaseModel.apply_model`` with the MODEL's transformer options (so other packs' attention patches run), after
ComfyUI's model management loaded it; comfy is reached through ``comfy_bridge`` and the objects' own methods.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..stylestudio.layers import existing_patch, patch_key, unet_cross_attention_layers
from ..vct.autograd import allow_autograd
from ..vct.attention import CrossRefinePatch, SelfInjectionPatch
from ..vct.concept import ConceptSettings, Vectors, learn_concept
from ..vct.ddim import DDIMSchedule, NullTextSettings, invert, null_text_optimise
from ..vct.embedding_file import free_path, read_header, write_embedding
from ..vct.fusion import NEGATIVE, POSITIVE, Cond, fuse, paper_control
from ..vct.tokens import refine_edit
from . import comfy_bridge

CATEGORY = "style_transfer/VCT"
TEMPLATE = "a photo of {}"  # the concept-inversion prompt around the learned tokens


def check_unet(model: Any) -> None:
    """VCT here runs on ε-prediction UNets (SD1.5/SDXL); a DiT or flow model gets a clear refusal."""
    base = model.model
    kinds = [c.__name__ for c in type(base.model_sampling).__mro__]
    prediction = next((name for name in ("EPS", "V_PREDICTION", "CONST") if name in kinds), kinds[0])
    if type(base.diffusion_model).__name__ != "UNetModel" or prediction != "EPS":
        raise ValueError(
            f"VCT needs an SD1.5/SDXL UNet with ε-prediction; this MODEL is {type(base).__name__} "
            f"({type(base.diffusion_model).__name__}, {prediction}). Flux/SD3.5 would need rectified-flow inversion "
            "and attention control in their DiT blocks, which this pack does not provide yet.")


def check_finite(name: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"the {name} holds NaN or inf values")


class ComfyEps:
    """The core's ``EpsFn`` over a ComfyUI MODEL: DDIM-scaled latents and a ``Cond`` in, ε out.

    ComfyUI's EPS models take ``x = x_ddim·√(1+σ²)`` and return the denoised latent ``x - σ·ε``.
    """

    def __init__(self, model: Any) -> None:
        self.model, self.base = model, model.model

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        device = self.model.load_device
        per_chunk = x.shape[0] // len(cond.kinds)
        s = sigma.to(device).view(-1, 1, 1, 1)
        x_in = x.to(device) * (1 + s ** 2).sqrt()
        options = {**self.model.model_options.get("transformer_options", {}), **cond.options,
                   "cond_or_uncond": list(cond.kinds), "sigmas": sigma.to(device)}
        extra = {} if cond.adm is None else {"y": cond.adm.repeat_interleave(per_chunk, 0).to(device)}
        context = cond.context.repeat_interleave(per_chunk, 0).to(device)
        denoised = self.base.apply_model(x_in, sigma.to(device), c_crossattn=context, transformer_options=options, **extra)
        return ((x_in - denoised.to(x_in.dtype)) / s).float().to(x.device)


def model_identity(model: Any) -> tuple:
    """The UNet (weights object and weight patches such as LoRAs) an inversion belongs to."""
    return (type(model.model).__name__, id(model.model), str(getattr(model, "patches_uuid", "")))


def encode_text(clip: Any, model: Any, tokens: dict, size: tuple[int, int]) -> Cond:
    """CLIPTextEncode's encoding of ``tokens`` (differentiable), with SDXL's ADM vector for a ``size`` latent."""
    # ComfyUI's CLIP layers add in place (``x += ...``); saving copies for backward lets gradients reach learned vectors
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        context, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    check_clip_fits(context.shape[-1], model)
    height, width = size[0] * 8, size[1] * 8
    adm = model.model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                                 target_width=width, target_height=height)
    return Cond(context.float(), None if adm is None else adm.float())


def check_clip_fits(width: int, model: Any) -> None:
    """The UNet's cross-attention takes one text width (SD1.5 768, SD2 1024, SDXL 768 + 1280); another CLIP's features
    would fail deep inside the UNet with a matrix-shape error."""
    expected = model.model.model_config.unet_config.get("context_dim")
    if expected is not None and width != expected:
        raise ValueError(f"the CLIP gives {width}-wide text features, the {type(model.model).__name__} MODEL's UNet takes "
                         f"{expected}-wide ones: use the CLIP from the same checkpoint as the MODEL")


class VCTProgress:
    """The core's step callback: ComfyUI's progress bar, and a console bar named after the node with the step's loss
    (as Train StyleMamba shows it); returns True once the user pressed Cancel."""

    def __init__(self, name: str, total: int) -> None:
        self.progress = comfy_bridge.Progress(total)
        self.bar = tqdm(total=total, desc=name, unit="step")

    def __call__(self, done: int, total: int, loss: float | None = None) -> bool:
        self.bar.update(done - self.bar.n)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}")
        return self.progress.update_unless_cancelled(done, total)

    def __enter__(self) -> "VCTProgress":
        return self

    def __exit__(self, *_: object) -> None:
        self.bar.close()


@dataclass(frozen=True)
class ContentInversion:
    """What the fusion needs from the content: the inverted noise, one null-text embedding per step, the source
    prompt's conditioning, and the model, schedule, CFG and latent size they belong to."""

    x_t: Tensor
    nulls: tuple[Tensor, ...]
    null_adm: Tensor | None
    source: Cond
    schedule: DDIMSchedule
    cfg: float
    latent_shape: tuple[int, ...]
    model: tuple
    reconstruction_losses: tuple[float, ...]

    def check_model(self, model: Any) -> None:
        if model_identity(model) != self.model:
            raise ValueError(f"this VCT inversion was made with another MODEL ({self.model[0]}, other weights or LoRAs) "
                             f"than the fusion's ({type(model.model).__name__}); invert the content with the same MODEL")
        if DDIMSchedule.from_table(model.get_model_object("model_sampling").sigmas, self.schedule.steps).identity() \
                != self.schedule.identity():
            raise ValueError("this VCT inversion was made with another noise schedule than the fusion MODEL's")


class VCTContentInversion:
    """DDIM inversion of the content latent with the empty prompt, then null-text optimisation at the chosen CFG."""

    DESCRIPTION = ("VCT content inversion: DDIM-inverts the content LATENT with the empty prompt, then optimises one "
                   "null-text embedding per step so that sampling at the chosen CFG retraces the content exactly. "
                   "Costs steps × (inner steps + 2) UNet passes with gradients; inner_steps=0 is plain DDIM inversion.")
    RETURN_TYPES = ("VCT_INVERSION",)
    RETURN_NAMES = ("inversion",)
    FUNCTION = "invert"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5/SDXL UNet model; the fusion must use the same one."}),
            "clip": ("CLIP", {"tooltip": "Encodes the empty source prompt."}),
            "latent": ("LATENT", {"tooltip": "The content (VAE Encode of your photo), one image."}),
            "steps": ("INT", {"default": 50, "min": 2, "max": 200, "tooltip": "DDIM steps (paper: 50)."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Fusion CFG (paper: 7.5)."}),
            "inner_steps": ("INT", {"default": 50, "min": 0, "max": 200, "tooltip": (
                "Null-text Adam steps per DDIM step at most (paper: 50; it stops early once the error is tiny).")}),
        }, "optional": {
            "content_prompt": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "The source stream's prompt (paper: empty). A caption of the photo keeps more of it at high CFG.")}),
        }}

    def invert(self, model: Any, clip: Any, latent: dict, steps: int, cfg: float, inner_steps: int,
               content_prompt: str = "") -> tuple:
        check_unet(model)
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[0] != 1:
            raise ValueError(f"VCT inverts one image latent (1, C, H, W), got {tuple(samples.shape)}")
        check_finite("content latent", samples)
        comfy_bridge.load_patcher(model)
        schedule = DDIMSchedule.from_table(model.get_model_object("model_sampling").sigmas, steps)
        x0 = model.model.process_latent_in(samples.float())
        size = tuple(samples.shape[-2:])
        source = encode_text(clip, model, clip.tokenize(content_prompt), size)
        null = encode_text(clip, model, clip.tokenize(""), size)
        eps = ComfyEps(model)
        plain = inner_steps == 0 or cfg == 1.0  # no null-text: CFG 1 needs none
        bar = steps if plain else 2 * steps
        with VCTProgress("VCTContentInversion", bar) as progress:
            try:
                path = invert(eps, x0, source.as_kind(POSITIVE), schedule, lambda done, total: progress(done, bar))
                if plain:
                    nulls, losses = [null.context] * steps, []
                else:
                    allow_autograd(model.model)
                    settings = NullTextSettings(inner_steps=inner_steps)
                    nulls, losses = null_text_optimise(
                        eps, path, source.as_kind(POSITIVE), null.context, lambda e: Cond(e, null.adm, (NEGATIVE,)),
                        schedule, cfg, settings, lambda done, total: progress(steps + done, bar))
            except InterruptedError:
                comfy_bridge.throw_if_interrupted()
                raise
        inversion = ContentInversion(path[-1], tuple(nulls), null.adm, source, schedule, cfg, tuple(samples.shape),
                                     model_identity(model), tuple(losses))
        return (inversion,)


class VCTConceptInversion:
    """Learns the reference picture's concept as a few new token vectors, saved as a textual-inversion embedding."""

    DESCRIPTION = ("VCT concept inversion: learns a few token vectors (paper: 3) from one reference picture and saves "
                   "them in models/embeddings, so any prompt (here or in any workflow) can use the concept as "
                   "embedding:<name>. Never overwrites a file: a taken name gets _00001, ... Cancel saves the best so far.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("concept",)
    OUTPUT_TOOLTIPS = ("The concept as prompt text, embedding:<saved name>.",)
    FUNCTION = "learn"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
            "reference": ("IMAGE", {"tooltip": "The picture whose visual concept to learn (one image)."}),
            "embedding_name": ("STRING", {"default": "vct_concept"}),
            "initializer_word": ("STRING", {"default": "painting", "tooltip": "The vectors start as this word's."}),
            "vectors": ("INT", {"default": 3, "min": 1, "max": 16, "tooltip": "Token vectors of the concept (paper: 3)."}),
            "steps": ("INT", {"default": 500, "min": 1, "max": 10000, "tooltip": "Paper: 100-1000 (500 in its README)."}),
            "learning_rate": ("FLOAT", {"default": 2e-3, "min": 1e-5, "max": 1.0, "step": 1e-4}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 32 - 1}),
        }}

    def learn(self, model: Any, clip: Any, vae: Any, reference: Tensor, embedding_name: str, initializer_word: str,
              vectors: int, steps: int, learning_rate: float, seed: int) -> tuple[str]:
        check_unet(model)
        if reference.ndim != 4 or reference.shape[0] != 1:
            raise ValueError(f"the reference must be one image (a batch of 1), got a batch of shape {tuple(reference.shape)}")
        check_finite("reference image", reference)
        folders = comfy_bridge.model_folder_paths("embeddings")
        path = free_path(Path(folders[0]) if folders else Path.cwd(), embedding_name)
        x0 = model.model.process_latent_in(vae.encode(reference[..., :3]).float())
        comfy_bridge.load_patcher(model)
        clip.load_model()
        allow_autograd(model.model)
        allow_autograd(clip.cond_stage_model)
        tokens, slots = concept_tokens(clip, vectors)
        initial = initial_vectors(clip, initializer_word, vectors, set(tokens))
        check_family(model, initial)

        def encode(learned: Vectors) -> Cond:
            filled = {name: [[(learned[name][slot], 1.0) if slot is not None else pair
                              for pair, slot in zip(row, slots[name])] for row in rows] for name, rows in tokens.items()}
            return encode_text(clip, model, filled, tuple(x0.shape[-2:]))

        settings = ConceptSettings(steps=steps, lr=learning_rate, seed=seed, eval_every=max(1, min(25, steps // 4)))
        sigmas = model.get_model_object("model_sampling").sigmas
        with VCTProgress("VCTConceptInversion", steps) as progress:
            result = learn_concept(ComfyEps(model), encode, initial, x0, sigmas, settings, progress)
        metadata = {"initializer_word": initializer_word, "vectors": vectors, "steps_done": result.steps_done,
                    "stopped_early": result.stopped_early, "first_loss": result.first_loss, "best_loss": result.best_loss,
                    "model": type(model.model).__name__}
        write_embedding(path, result.vectors, metadata)
        outcome = (f"{'cancelled after ' + str(result.steps_done) + ' steps, best so far' if result.stopped_early else 'done'}"
                   f" (validation loss {result.first_loss:.4f} -> {result.best_loss:.4f}) written to {path.name}")
        logging.info("VCTConceptInversion: %s in %s", outcome, path.parent)
        return {"ui": {"text": [outcome]}, "result": (f"embedding:{path.stem}",)}


def concept_tokens(clip: Any, count: int) -> tuple[dict, dict[str, list[int | None]]]:
    """TEMPLATE's tokens per text encoder with ``count`` slots for the learned vectors before the end token; per
    token, the slot (vector index) it holds, or None."""
    prefix = TEMPLATE.split("{}")[0].strip()
    tokens = clip.tokenize(prefix)
    filled, slots = {}, {}
    for name, rows in tokens.items():
        row = rows[0]
        end = next(i for i in range(1, len(row)) if not _same_as_prefix(row, i, clip, name))
        new_row = [*row[:end], *[(None, 1.0)] * count, *row[end:]][:len(row)]
        filled[name] = [new_row]
        slots[name] = [None] * end + list(range(count)) + [None] * (len(row) - end - count)
    return filled, slots


def _same_as_prefix(row: list, index: int, clip: Any, name: str) -> bool:
    """True while ``row[index]`` is a word of the prefix (not the end/pad token)."""
    end = getattr(getattr(clip.tokenizer, f"clip_{name}"), "end_token", None)
    return row[index][0] != end


def initial_vectors(clip: Any, word: str, count: int, names: set[str]) -> Vectors:
    """The initializer word's first token embedding, ``count`` times, per text encoder."""
    tokens = clip.tokenize(word)
    vectors = {}
    for name in names:
        token_id = tokens[name][0][1][0]
        table = getattr(clip.cond_stage_model, f"clip_{name}").transformer.get_input_embeddings().weight
        vectors[name] = table[token_id].detach().float().cpu().expand(count, -1).clone()
    return vectors


def check_family(model: Any, vectors: Vectors) -> None:
    widths = {name: v.shape[-1] for name, v in vectors.items()}
    expected = {"SDXL": {"g", "l"}}.get(type(model.model).__name__, {"l"})
    if set(widths) != expected:
        raise ValueError(f"the CLIP's text encoders {sorted(widths)} do not fit the {type(model.model).__name__} MODEL "
                         f"(needs {sorted(expected)}): use the CLIP from the same checkpoint")


def _chain(patch: Any) -> list[Any]:
    chain = []
    while patch is not None:
        chain.append(patch)
        patch = getattr(patch, "previous", None)
    return chain


def has_attention_control(model: Any) -> bool:
    """True when our self-injection patch runs somewhere in the model's attn1 patches (applied before or after others)."""
    attn1 = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    return any(isinstance(p, SelfInjectionPatch) for patch in attn1.values() for p in _chain(patch))


def with_attention_control(model: Any, attention: Any = None) -> Any:
    """A clone with VCT's attn1/attn2 patches on every transformer layer, chained to the patches already there; inert
    outside the fusion. ``attention`` defaults to ComfyUI's own attention function."""
    from collections import Counter

    attention = attention or comfy_bridge.optimized_attention()
    patched = model.clone()
    layers = list(unet_cross_attention_layers(patched.get_model_object("diffusion_model")))
    replaced = patched.model_options["transformer_options"].get("patches_replace", {})
    attn1, attn2 = replaced.get("attn1", {}), replaced.get("attn2", {})
    per_block = Counter(layer[:2] for layer in layers)
    for layer in layers:
        patched.set_model_attn1_replace(SelfInjectionPatch(existing_patch(attn1, layer), attention),
                                        *patch_key(attn1, layer, per_block[layer[:2]]))
        patched.set_model_attn2_replace(CrossRefinePatch(existing_patch(attn2, layer), attention),
                                        *patch_key(attn2, layer, per_block[layer[:2]]))
    return patched


EMBEDDING = "embedding:"


def concept_file(concept: str) -> Path | None:
    """The ``.safetensors`` file in models/embeddings that ``embedding:<name>`` names, or None."""
    name = concept.strip().removeprefix(EMBEDDING).split()[0] if concept.strip() else ""
    for folder in comfy_bridge.model_folder_paths("embeddings"):
        path = Path(folder) / f"{name}.safetensors"
        if name and path.is_file():
            return path
    return None


def check_concept(concept: str, clip: Any, model: Any) -> None:
    """Refuse a concept the fusion would silently sample without. ComfyUI's tokenizer drops an embedding it cannot find,
    and one whose width does not fit a text encoder (an SD1.5 file's 768-wide vectors for SDXL's 1280-wide clip_g), with
    only a log warning; and it reads an SDXL file's clip_l half into an SD1.5 CLIP without a word."""
    if EMBEDDING not in concept:
        return  # a concept in plain words
    name = concept.strip().removeprefix(EMBEDDING)
    tokens = clip.tokenize(concept)
    for encoder, rows in sorted(tokens.items()):
        widths = {t.shape[-1] for row in rows for t, *_ in row if not isinstance(t, int)}
        if not widths:
            raise ValueError(f"the concept {concept!r} is not an embedding in models/embeddings "
                             f"({', '.join(comfy_bridge.model_folder_paths('embeddings'))}): ComfyUI would ignore it and "
                             "sample without the concept; link VCT Concept Inversion's output or type embedding:<saved name>")
        takes = getattr(clip.tokenizer, f"clip_{encoder}").embedding_size
        if widths != {takes}:
            raise ValueError(f"the concept {name!r} holds {'/'.join(map(str, sorted(widths)))}-wide vectors for the CLIP's "
                             f"clip_{encoder}, which takes {takes}-wide ones: it was learned for another model family "
                             "(SD1.5 files hold 768-wide emb_params, SDXL files clip_l 768 + clip_g 1280); ComfyUI would "
                             "drop it. Learn the concept with this MODEL and CLIP")
    path = concept_file(concept)
    if path is None:
        return
    keys, metadata = read_header(path)
    if "clip_g" in keys and "g" not in tokens:
        raise ValueError(f"the concept {name!r} is an SDXL embedding (clip_l + clip_g) and the CLIP has no clip_g "
                         "(an SD1.5 CLIP): ComfyUI would use its clip_l half alone. Learn the concept with this MODEL and CLIP")
    learned_on = metadata["model"] if metadata else None
    if learned_on is not None and learned_on != type(model.model).__name__:
        raise ValueError(f"the concept {name!r} was learned on {learned_on}, the MODEL is {type(model.model).__name__}: "
                         "learn the concept with this MODEL")


def prompt_ids(tokens: dict) -> tuple[list[Any], list[bool]]:
    """Token ids of the first text encoder's first chunk, embedding vectors as unique markers; which are embeddings."""
    row = tokens[sorted(tokens)[-1]][0]  # "l" (SD1.5) or "l" of SDXL's g + l: both lay tokens out alike
    ids = [int(t) if isinstance(t, int) else ("embedding", i) for i, (t, _) in enumerate(row)]
    return ids, [not isinstance(t, int) for t, _ in row]


class VCTAttentionPatch:
    """VCT's attention control as a MODEL patch, to place before or after other packs' patches (IPAdapter, StyleStudio)."""

    DESCRIPTION = ("Adds VCT's attention control (self-attention injection, cross-attention refine) to a MODEL. It only "
                   "acts inside VCT Fusion, chains with other packs' attention patches in either order, and is optional: "
                   "VCT Fusion adds it itself when it is missing.")
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model: Any) -> tuple:
        check_unet(model)
        return (model if has_attention_control(model) else with_attention_control(model),)


class VCTFusion:
    """Dual-stream sampling: the content's inversion as source, the concept prompt as target, attention control between."""

    DESCRIPTION = ("VCT fusion: samples the source stream (the content, retraced with its null-text embeddings) and the "
                   "target stream (your prompt with the concept) from the inverted noise in one batch; the target takes "
                   "the source's self-attention (structure) early on and its cross-attention for the first steps, with "
                   "the concept's tokens reweighted. Steps and CFG are the inversion's.")
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("translated", "reconstruction")
    FUNCTION = "fuse"
    CATEGORY = CATEGORY
    PERCENT = {"min": 0.0, "max": 1.0, "step": 0.01}

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL",), "clip": ("CLIP",),
            "inversion": ("VCT_INVERSION", {"tooltip": "From VCT Content Inversion with the same MODEL."}),
            "concept": ("STRING", {"default": "embedding:vct_concept", "tooltip": (
                "The concept: link VCT Concept Inversion's output, or type embedding:<name> of an earlier one.")}),
            "prompt": ("STRING", {"default": "{concept}", "multiline": True,
                                  "tooltip": "The target prompt; {concept} is replaced by the concept."}),
            "self_attention_end": ("FLOAT", {"default": 0.9, **cls.PERCENT, "tooltip": "Paper: steps [0, 45) of 50."}),
            "cross_attention_end": ("FLOAT", {"default": 0.2, **cls.PERCENT, "tooltip": "Paper: the first 20 %."}),
            "max_self_tokens": ("INT", {"default": 1024, "min": 0, "max": 1 << 20, "tooltip": (
                "Self-attention is injected only in layers with at most this many query tokens (paper: 32² = 1024).")}),
            "concept_weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 4.0, "step": 0.05,
                                         "tooltip": "Cross-attention reweight of the concept's tokens (paper: 0.5)."}),
        }}

    def fuse(self, model: Any, clip: Any, inversion: ContentInversion, concept: str, prompt: str, self_attention_end: float,
             cross_attention_end: float, max_self_tokens: int, concept_weight: float) -> tuple:
        check_unet(model)
        inversion.check_model(model)
        check_concept(concept, clip, model)
        tokens = clip.tokenize(prompt.replace("{concept}", concept))
        source_ids, _ = prompt_ids(clip.tokenize(""))
        target_ids, concept_mask = prompt_ids(tokens)
        edit = refine_edit(source_ids, target_ids, concept_mask, concept_weight)
        target = encode_text(clip, model, tokens, tuple(inversion.latent_shape[-2:]))
        control = paper_control(inversion.schedule.steps, self_attention_end, cross_attention_end, max_self_tokens, edit)
        patched = model if has_attention_control(model) else with_attention_control(model)
        comfy_bridge.load_patcher(patched)
        nulls = [Cond(null, inversion.null_adm, (NEGATIVE,)) for null in inversion.nulls]
        try:
            with VCTProgress("VCTFusion", inversion.schedule.steps) as progress:
                source, translated = fuse(ComfyEps(patched), inversion.x_t, nulls, inversion.source, target,
                                          inversion.schedule, inversion.cfg, control, progress)
        except InterruptedError:
            comfy_bridge.throw_if_interrupted()
            raise
        out = lambda x: {"samples": model.model.process_latent_out(x).cpu()}
        return out(translated), out(source)


NODE_CLASS_MAPPINGS = {"VCTConceptInversion": VCTConceptInversion, "VCTContentInversion": VCTContentInversion,
                       "VCTAttentionPatch": VCTAttentionPatch, "VCTFusion": VCTFusion}
NODE_DISPLAY_NAME_MAPPINGS = {"VCTConceptInversion": "VCT Concept Inversion", "VCTContentInversion": "VCT Content Inversion",
                              "VCTAttentionPatch": "VCT Attention Patch", "VCTFusion": "VCT Fusion"}
