"""VCT's core in plain torch: the DDIM chain, inversion and null-text optimisation, concept learning, the embedding file,
token alignment, and the attention patches' exact semantics (tiny hand-made ε models; no ComfyUI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from collecting_patch import CollectingPatch, ImagePromptCallback
from comfyui_stylemamba.stylestudio.patches import sdpa_attention
from comfyui_stylemamba.vct import ddim
from comfyui_stylemamba.vct.attention import FUSION_KEY, AttentionControl, CrossEdit, CrossRefinePatch, FusionCall, SelfInjectionPatch
from comfyui_stylemamba.vct.concept import ConceptSettings, learn_concept
from comfyui_stylemamba.vct.embedding_file import free_path, write_embedding
from comfyui_stylemamba.vct.fusion import NEGATIVE, Cond, batch, fuse, paper_control
from comfyui_stylemamba.vct.tokens import refine_edit

#: SD1.5's table: scaled_linear β from 0.00085 to 0.012 over 1000 steps, σ = √((1-ᾱ)/ᾱ)
BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
SIGMAS = ((1 - torch.cumprod(1 - BETAS, 0)) / torch.cumprod(1 - BETAS, 0)).sqrt()


class ToyEps(torch.nn.Module):
    """ε depending on x, σ and the context's mean token: smooth, so DDIM inversion is nearly exact."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.mix = torch.randn(4, 4, generator=generator) * 0.05
        self.text = torch.randn(width, 4, generator=generator) * 0.5

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        per_chunk = x.shape[0] // cond.context.shape[0]
        text = (cond.context.mean(1) @ self.text).repeat_interleave(per_chunk, 0)[:, :, None, None]
        scale = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
        return torch.einsum("bchw,cd->bdhw", x, self.mix) + 0.1 * scale * text


def test_the_ddim_chain_is_the_reference_timesteps_of_the_models_table():
    schedule = ddim.DDIMSchedule.from_table(SIGMAS, 50)
    assert schedule.steps == 50
    assert torch.equal(schedule.sigmas[[0, 1, -2, -1]], SIGMAS[[981, 961, 1, 0]])
    assert all(schedule.sigmas[i] > schedule.sigmas[i + 1] for i in range(50))
    with pytest.raises(ValueError, match="steps must be between 1 and 999"):
        ddim.DDIMSchedule.from_table(SIGMAS, 0)


class ToyDenoiser(ToyEps):
    """The ε that is exact when the clean latent is the context's per-channel constant: concept learning can reach it."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        alpha = (1 / (1 + sigma ** 2)).view(-1, 1, 1, 1)
        clean = (cond.context.mean(1) @ self.text)[:, :, None, None]
        return (x - alpha.sqrt() * clean) / (1 - alpha).sqrt()


def test_a_ddim_move_there_and_back_with_the_same_noise_estimate_is_the_identity():
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    there = ddim.ddim_move(x, eps, 0.9, 0.2)
    torch.testing.assert_close(ddim.ddim_move(there, eps, 0.2, 0.9), x, atol=1e-5, rtol=0)


def test_inversion_then_sampling_at_cfg_1_reconstructs_and_null_text_removes_the_cfg_drift():
    model, schedule = ToyEps(), ddim.DDIMSchedule.from_table(SIGMAS, 10)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = Cond(torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2)))
    null = Cond(torch.zeros(1, 5, 8), kinds=(NEGATIVE,))
    path = ddim.invert(model, x0, cond, schedule)
    assert len(path) == 11 and torch.equal(path[0], x0)
    error = lambda x: float((x - x0).pow(2).mean().sqrt())
    cfg1 = error(ddim.sample(model, path[-1], cond, None, schedule, 1.0))
    plain = error(ddim.sample(model, path[-1], cond, null, schedule, 7.5))
    nulls, losses = ddim.null_text_optimise(model, path, cond, null.context, lambda e: Cond(e, kinds=(NEGATIVE,)), schedule, 7.5,
                                           ddim.NullTextSettings(inner_steps=20, lr=5e-2))
    null_text = error(ddim.sample(model, path[-1], cond, [Cond(n, kinds=(NEGATIVE,)) for n in nulls], schedule, 7.5))
    print(f"DDIM at CFG 1: {cfg1:.4f}, CFG 7.5 plain: {plain:.4f}, null-text: {null_text:.4f} (content RMS 1)")
    assert cfg1 < 0.1 and plain > 5 * cfg1  # inversion nearly reconstructs at CFG 1; CFG 7.5 drifts far
    assert null_text < plain / 5 and len(nulls) == len(losses) == 10


def test_null_text_cancel_stops_after_the_step_it_is_pressed_in():
    model, schedule = ToyEps(), ddim.DDIMSchedule.from_table(SIGMAS, 4)
    cond = Cond(torch.ones(1, 5, 8))
    path = ddim.invert(model, torch.randn(1, 4, 8, 8), cond, schedule)
    seen = []
    with pytest.raises(InterruptedError, match="cancelled"):
        ddim.null_text_optimise(model, path, cond, torch.zeros(1, 5, 8), lambda e: Cond(e, kinds=(NEGATIVE,)), schedule, 7.5,
                                ddim.NullTextSettings(inner_steps=1), on_step=lambda done, total: seen.append(done) or done == 2)
    assert seen == [0, 1, 1, 2]  # after each inner step (outer steps done so far), then after each outer step
    calls = []  # Cancel pressed during the third inner step of the first outer step: it stops there, not 47 steps later
    with pytest.raises(InterruptedError, match="cancelled"):
        ddim.null_text_optimise(model, path, cond, torch.zeros(1, 5, 8), lambda e: Cond(e, kinds=(NEGATIVE,)), schedule, 7.5,
                                ddim.NullTextSettings(inner_steps=50, epsilon=0.0, epsilon_per_step=0.0),
                                on_step=lambda done, total: calls.append(done) or len(calls) == 3)
    assert calls == [0, 0, 0]


def test_concept_learning_lowers_the_validation_loss_and_cancel_keeps_the_best_so_far():
    model, sigmas = ToyDenoiser(), SIGMAS.float()
    x0 = torch.tensor([0.5, -1.0, 2.0, 0.3]).view(1, 4, 1, 1).expand(1, 4, 8, 8)
    encode = lambda vectors: Cond(torch.cat([torch.zeros(1, 2, 8), vectors["l"][None]], 1))
    settings = ConceptSettings(steps=40, lr=5e-2, eval_every=10)
    result = learn_concept(model, encode, {"l": torch.zeros(3, 8)}, x0, sigmas, settings)
    assert result.best_loss < 0.5 * result.first_loss and result.steps_done == 40 and not result.stopped_early
    assert result.history[0] == result.first_loss and min(result.history) == result.best_loss
    seen: list[float] = []  # each step's training loss, for the progress bar
    stopped = learn_concept(model, encode, {"l": torch.zeros(3, 8)}, x0, sigmas, settings,
                            on_step=lambda done, total, loss: seen.append(loss) or done == 25)
    assert stopped.stopped_early and stopped.steps_done == 25 and stopped.history == result.history[:3]
    assert len(seen) == 25 and all(0 < loss < float("inf") for loss in seen) and len(set(seen)) > 1
    with pytest.raises(ValueError, match="one picture"):
        learn_concept(model, encode, {"l": torch.zeros(3, 8)}, x0.expand(2, -1, -1, -1), sigmas, settings)


def test_embedding_files_use_comfyuis_layouts_and_never_overwrite(tmp_path):
    first = write_embedding(free_path(tmp_path, "fox"), {"l": torch.ones(3, 768)}, {"model": "SD15"})
    second = write_embedding(free_path(tmp_path, "fox"), {"l": torch.zeros(3, 768)}, {"model": "SD15"})
    assert (first.name, second.name) == ("fox.safetensors", "fox_00001.safetensors")
    with safe_open(str(first), "pt") as handle:
        assert list(handle.keys()) == ["emb_params"] and bool((handle.get_tensor("emb_params") == 1).all())
        assert json.loads(handle.metadata()["vct"]) == {"model": "SD15"}
    with pytest.raises(FileExistsError):
        write_embedding(first, {"l": torch.zeros(3, 768)}, {})
    sdxl = write_embedding(free_path(tmp_path, "fox_xl"), {"l": torch.ones(3, 768), "g": torch.ones(3, 1280)}, {})
    with safe_open(str(sdxl), "pt") as handle:
        assert sorted(handle.keys()) == ["clip_g", "clip_l"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.safetensors", "fox_00001.safetensors", "fox_xl.safetensors"]
    for bad in ("", "../fox", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain file name"):
            free_path(tmp_path, bad)


def test_refine_aligns_shared_tokens_and_reweights_the_concept():
    bos, end = 49406, 49407
    source = [bos, end, end, end, end, end]
    target = [bos, 320, ("embedding", 2), ("embedding", 3), end, end]
    edit = refine_edit(source, target, [False, False, True, True, False, False], 0.5)
    assert edit.alphas.tolist() == [1, 0, 0, 0, 1, 1]  # BOS and the end run come from the source; new words keep theirs
    assert edit.mapper[0] == 0 and edit.mapper[4:].tolist() == [1, 2]
    assert edit.weights.tolist() == [1, 1, 0.5, 0.5, 1, 1]
    with pytest.raises(ValueError, match="77-token chunk"):
        refine_edit(source, target[:-1], [False] * 5, 0.5)


HEADS, TOKENS, WIDTH = 2, 16, 8


def qkv(keys: int = TOKENS, seed: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, n, WIDTH, generator=generator) for n in (TOKENS, keys, keys))


def options(call: FusionCall | None = None) -> dict:
    extra = {"n_heads": HEADS, "cond_or_uncond": [1, 1, 0, 0], "block": ("output", 3), "block_index": 0}
    return extra if call is None else {**extra, FUSION_KEY: call}


def call_at(step: int, cross: CrossEdit | None = None, max_tokens: int = 16) -> FusionCall:
    return FusionCall(step, 4, ((2, 3),), AttentionControl((0, 3), (0, 2), max_tokens, cross))


def test_self_injection_gives_the_target_the_sources_attention_only_where_and_when_asked():
    q, k, v = qkv()
    plain = sdpa_attention(q, k, v, HEADS)
    patch = SelfInjectionPatch()
    injected = patch(q, k, v, options(call_at(1)))
    expected_target = sdpa_attention(q[2:3], k[2:3], v[3:4], HEADS)  # softmax(Q_s K_sᵀ) V_t
    assert torch.equal(injected[3:4], expected_target) and not torch.equal(injected[3:4], plain[3:4])
    assert torch.equal(injected[:3], plain[:3])  # the source and both unconditional halves are untouched
    for untouched in (patch(q, k, v, options()), patch(q, k, v, options(call_at(3))), patch(q, k, v, options(call_at(0, max_tokens=8)))):
        assert torch.equal(untouched, plain)  # no fusion / after the window / a layer with more queries than the limit


def cross_edit() -> CrossEdit:
    return CrossEdit(torch.tensor([0, 2, 1, 3, 4, 5]), torch.tensor([1.0, 0, 1, 1, 0, 1]), torch.tensor([1.0, 1, 1, 0.5, 1, 1]))


def test_cross_refine_is_prompt_to_prompts_edit_on_the_conditional_target_only():
    q, k, v = qkv(keys=6)
    plain = sdpa_attention(q, k, v, HEADS)
    patch, edit = CrossRefinePatch(), cross_edit()
    assert torch.equal(patch(q, k, v, options()), plain) and torch.equal(patch(q, k, v, options(call_at(2, edit))), plain)
    out = patch(q, k, v, options(call_at(1, edit)))
    split = lambda t: t.unflatten(-1, (HEADS, -1)).transpose(1, 2)
    probs = lambda i: torch.softmax(split(q[i:i + 1]) @ split(k[i:i + 1]).transpose(-1, -2) / math.sqrt(WIDTH // HEADS), -1)
    p_source, p_target = probs(2), probs(3)
    edited = (p_source[..., [0, 2, 1, 3, 4, 5]] * edit.alphas + p_target * (1 - edit.alphas)) * edit.weights
    expected = (edited @ split(v[3:4])).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out[3:4], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:3], plain[:3])


def test_cross_refine_chains_with_a_collecting_pack_in_either_order():
    q, k, v = qkv(keys=6)
    extra = {**options(call_at(0, cross_edit())), "sigmas": torch.tensor([1.0])}
    callback = ImagePromptCallback(sdpa_attention)
    ours_first = CrossRefinePatch(attention=sdpa_attention)
    ours_first.add(callback, weight=0.8, sigma_start=math.inf, sigma_end=0.0)
    theirs_first = CrossRefinePatch(previous=CollectingPatch(callback, sdpa_attention, weight=0.8, sigma_start=math.inf, sigma_end=0.0))
    alone = CrossRefinePatch()(q, k, v, extra)
    a, b = ours_first(q, k, v, extra), theirs_first(q, k, v, extra)
    assert torch.equal(a, b) and (a - alone).abs().max() > 1e-3


def test_the_fusion_without_control_is_plain_sampling_of_each_stream():
    model, schedule = ToyEps(), ddim.DDIMSchedule.from_table(SIGMAS, 5)
    x_t = torch.randn(1, 4, 8, 8)
    source, target = Cond(torch.randn(1, 5, 8)), Cond(torch.randn(1, 5, 8))
    nulls = [Cond(torch.zeros(1, 5, 8), kinds=(NEGATIVE,))] * 5
    fused_source, fused_target = fuse(model, x_t, nulls, source, target, schedule, 7.5, paper_control(5, 0.0, 0.0))
    torch.testing.assert_close(fused_target, ddim.sample(model, x_t, target, list(nulls), schedule, 7.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(fused_source, ddim.sample(model, x_t, source, list(nulls), schedule, 7.5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="4 null-text embeddings for a 5-step chain"):
        fuse(model, x_t, nulls[:4], source, target, schedule, 7.5, paper_control(5))


def test_paper_control_scales_the_reference_windows_and_batches_keep_chunk_order():
    control = paper_control(50)
    assert (control.self_steps, control.cross_steps, control.self_max_tokens) == ((0, 45), (0, 10), 1024)
    joined = batch([Cond(torch.zeros(1, 2, 3), kinds=(1,)), Cond(torch.ones(1, 2, 3))], {"x": 1})
    assert joined.kinds == (1, 0) and joined.context[:, 0, 0].tolist() == [0, 1] and joined.options == {"x": 1}


def test_a_model_built_in_inference_mode_lets_gradients_reach_its_input_after_allow_autograd():
    from comfyui_stylemamba.vct.autograd import allow_autograd

    with torch.inference_mode():  # as a ComfyUI loader node builds a checkpoint
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).eval()
        reference = model(torch.ones(2, 3))
    x = torch.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        model(x).sum().backward()
    assert allow_autograd(model) == 2 + 2 + 3  # both weights and biases; running mean, var, count
    assert allow_autograd(model) == 0
    model(x).sum().backward()
    assert x.grad is not None and not model[0].weight.requires_grad
    with torch.inference_mode():
        assert torch.equal(model(torch.ones(2, 3)), reference)
