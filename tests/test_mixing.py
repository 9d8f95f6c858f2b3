"""Mixed and regional styles: one pass of StyleFuse with the styles' AdaLN modulations mixed per sample or per token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba
from comfyui_stylemamba.stylemamba.mixing import StyleMix, mix_styles
from comfyui_stylemamba.stylemamba.model import mix_modulation, token_weights
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.stylize import stylize_latents

from builders import tiny_config, trained_like


def embedding(seed: int, encoder: str = "tiny", description: str | None = None) -> StyleEmbedding:
    generator = torch.Generator().manual_seed(seed)
    target, source = (F.normalize(torch.randn(1, 8, generator=generator), dim=-1) for _ in range(2))
    return StyleEmbedding(target, source, description or f"style {seed}", encoder)


@pytest.fixture
def style_mamba() -> StyleMamba:
    return StyleMamba(model=trained_like(tiny_config()).eval(), text_encoder="tiny")


@pytest.fixture
def latent() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def halves(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Left/right pixel masks whose edge falls on a latent pixel and a 2×2 token boundary (latent = size / 8)."""
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1
    return left, 1 - left


def test_a_mix_of_one_is_that_style_bit_for_bit(style_mamba):
    model, style = style_mamba.model, embedding(1)
    latent = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        single = model(latent, style.target)
        assert torch.equal(model(latent, style.target, style_weights=torch.ones(1, 1)), single)
        assert torch.equal(model(latent, style.target, style_weights=torch.ones(1, 1, 8, 8)), single)
    assert torch.equal(stylize_latents(style_mamba, latent, mix_styles([style], [0.3])), single)


def test_equal_weights_of_identical_styles_are_that_style(style_mamba, latent):
    style = embedding(1)
    single = stylize_latents(style_mamba, latent, style)
    mixed = stylize_latents(style_mamba, latent, mix_styles([style, style, style], [2.0, 2.0, 2.0]))
    torch.testing.assert_close(mixed, single, rtol=0, atol=1e-6)


def test_a_mask_of_ones_is_the_global_mix(style_mamba, latent):
    a, b = embedding(1), embedding(2)
    ones = torch.ones(1, 64, 64)
    global_mix = stylize_latents(style_mamba, latent, mix_styles([a, b], [1.0, 3.0]))
    regional = stylize_latents(style_mamba, latent, mix_styles([a, b], [1.0, 3.0], [ones, ones]))
    torch.testing.assert_close(regional, global_mix, rtol=0, atol=1e-6)
    assert (global_mix - stylize_latents(style_mamba, latent, a)).abs().max() > 1e-3  # both styles count


def test_hard_masks_on_a_tokenwise_model_equal_each_regions_single_style_run(latent):
    """With the mixers' outputs off, every token is computed on its own: the regional mix must be exactly each style's run."""
    model = trained_like(tiny_config())
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.out_proj.weight.zero_()
    style_mamba = StyleMamba(model=model.eval(), text_encoder="tiny")
    a, b = embedding(1), embedding(2)
    left, right = halves()
    regional = stylize_latents(style_mamba, latent, mix_styles([a, b], [1.0, 1.0], [left, right]))
    only_a, only_b = stylize_latents(style_mamba, latent, a), stylize_latents(style_mamba, latent, b)
    torch.testing.assert_close(regional[..., :4], only_a[..., :4], rtol=0, atol=1e-6)
    torch.testing.assert_close(regional[..., 4:], only_b[..., 4:], rtol=0, atol=1e-6)
    assert (only_a - only_b).abs().max() > 1e-2


def test_hard_masks_equal_a_run_with_the_per_token_modulation_built_by_hand(style_mamba, latent):
    """The full model (scans mix tokens): same output as a single-style run whose modulations are replaced, token by
    token, with style a's on the left and style b's on the right."""
    model = style_mamba.model
    a, b = embedding(1), embedding(2)
    left, right = halves()
    regional = stylize_latents(style_mamba, latent, mix_styles([a, b], [1.0, 1.0], [left, right]))

    left_tokens = torch.zeros(4, 4, dtype=torch.bool)
    left_tokens[:, :2] = True
    left_tokens = left_tokens.flatten()[None, :, None]
    with torch.no_grad():
        cond_b = F.silu(model.style_embed(b.target))

    def per_token(module, inputs, output):
        return torch.where(left_tokens, output[:, None], F.linear(cond_b, module.weight, module.bias)[:, None])

    layers = [block.modulation for block in model.blocks] + [model.final_modulation]
    hooks = [layer.register_forward_hook(per_token) for layer in layers]
    try:
        by_hand = stylize_latents(style_mamba, latent, a)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(regional, by_hand, rtol=0, atol=1e-6)
    only_a = stylize_latents(style_mamba, latent, a)
    assert (regional[..., :4] - only_a[..., :4]).abs().max() > 1e-4  # the scan carries b's region into a's


def test_soft_masks_blend_the_modulations_in_proportion():
    params = torch.tensor([[1.0, 10.0], [3.0, 30.0]])  # two styles' parameters
    weights = torch.tensor([[[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]]])  # three tokens
    torch.testing.assert_close(mix_modulation(params, weights), torch.tensor([[[1.0, 10.0], [2.5, 25.0], [2.0, 20.0]]]))
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
    pooled = token_weights(torch.cat([ramp, 1 - ramp], dim=1), 2)
    assert pooled.shape == (1, 16, 2)
    torch.testing.assert_close(pooled[0, :4, 0], torch.tensor([1, 5, 9, 13]) / 14)  # each token: the mean of its 2×2 patch
    torch.testing.assert_close(pooled.sum(-1), torch.ones(1, 16))

    a, b = embedding(1), embedding(2)
    soft = torch.linspace(0, 1, 64).expand(1, 64, 64)
    weights, coverage = mix_styles([a, b], [1.0, 3.0], [soft, 1 - soft]).latent_weights(1, 8, 8)
    assert torch.equal(coverage, torch.ones(1, 1, 8, 8))
    column = weights[0, :, 0, 3]  # where the masks are ≈ 0.44 / 0.56
    mask_a = F.interpolate(soft[None], size=(8, 8), mode="bilinear")[0, 0, 0, 3]
    expected_a = 0.25 * mask_a / (0.25 * mask_a + 0.75 * (1 - mask_a))
    torch.testing.assert_close(column, torch.stack([expected_a, 1 - expected_a]))


def test_uncovered_pixels_keep_their_input_and_a_masked_mix_of_one_is_stylefuse_with_that_mask(style_mamba, latent):
    a, b = embedding(1), embedding(2)
    left, _ = halves()
    mixed = stylize_latents(style_mamba, latent, mix_styles([a, b], [1.0, 1.0], [left, left]))
    assert torch.equal(mixed[..., 4:], latent[..., 4:])
    assert (mixed[..., :4] - latent[..., :4]).abs().max() > 1e-3
    one = stylize_latents(style_mamba, latent, mix_styles([a], [1.0], [left]))
    torch.testing.assert_close(one, stylize_latents(style_mamba, latent, a, mask=left), rtol=0, atol=1e-6)


def test_video_latents_get_each_frame_its_regional_mix(style_mamba):
    video = torch.randn(2, 4, 3, 8, 8)
    left, right = halves()
    mix = mix_styles([embedding(1), embedding(2)], [1.0, 1.0], [left, right])
    styled = stylize_latents(style_mamba, video, mix, batch_size=4)
    torch.testing.assert_close(styled[:, :, 2], stylize_latents(style_mamba, video[:, :, 2], mix), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_model_the_styles_and_the_mask_weights():
    model = trained_like(tiny_config(depth=1))
    styles = torch.randn(2, 8, requires_grad=True)
    ramp = torch.linspace(0, 1, 6).expand(2, 1, 6, 6)
    weights = torch.cat([ramp, 1 - ramp], dim=1).requires_grad_(True)
    model(torch.randn(2, 4, 6, 6), styles, style_weights=weights).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == [name for name, _ in model.temporal.named_parameters(prefix="temporal")]  # video only
    assert (styles.grad.abs().sum(dim=1) > 0).all()
    assert weights.grad.abs().max() > 0


def test_weights_are_normalised_zero_drops_a_style_and_nested_mixes_flatten():
    a, b, c = embedding(1), embedding(2), embedding(3)
    mix = mix_styles([a, b, c], [2.0, 0.0, 6.0])
    assert [part.style for part in mix.components] == [a, c]
    assert [part.weight for part in mix.components] == [0.25, 0.75]
    nested = mix_styles([mix_styles([a, b], [1.0, 1.0]), c], [1.0, 1.0])
    assert [part.weight for part in nested.components] == [0.25, 0.25, 0.5]
    assert nested.embeddings.shape == (3, 8)
    torch.testing.assert_close(nested.target, F.normalize(0.25 * a.target + 0.25 * b.target + 0.5 * c.target, dim=-1))
    assert nested.encoder == "tiny"
    assert nested.description == "0.25 × style 1 + 0.25 × style 2 + 0.50 × style 3"


@pytest.mark.parametrize(
    "styles,weights,masks,message",
    [
        ([], [], None, "needs at least one style"),
        ([embedding(1)], [1.0, 2.0], None, "1 styles need 1 weights and masks, got 2 and 1"),
        ([embedding(1), embedding(2)], [1.0, -1.0], None, "weight 2 is -1.0; weights must be finite and 0 or more"),
        ([embedding(1)], [float("nan")], None, "weight 1 is nan"),
        ([embedding(1), embedding(2)], [0.0, 0.0], None, "are all zero; give at least one style a positive weight"),
        ([embedding(1), embedding(2, encoder="other")], [1.0, 1.0], None, "'style 2' was encoded with 'other' but 'style 1' with 'tiny'"),
        ([embedding(1)], [1.0], [torch.zeros(1, 8, 8)], "mask 1 is all zero, so its style would never show"),
        ([embedding(1)], [1.0], [torch.ones(1, 1, 8, 8)], "mask 1 must be a MASK \\(batch, height, width\\)"),
        ([embedding(1)], [1.0], [torch.full((8, 8), float("nan"))], "mask 1 holds NaN"),
    ],
)
def test_bad_mixes_are_refused(styles, weights, masks, message):
    with pytest.raises(ValueError, match=message):
        mix_styles(styles, weights, masks)


def test_a_masked_mix_inside_a_masked_mix_is_refused():
    left, right = halves()
    inner = mix_styles([embedding(1)], [1.0], [left])
    with pytest.raises(ValueError, match="style 1 is a mix with its own masks"):
        mix_styles([inner, embedding(2)], [1.0, 1.0], [right, None])


@pytest.mark.parametrize(
    "mask,message",
    [
        (torch.ones(3, 64, 64), "the mask of 'style 1': mask batch 3 does not match the latent batch 2"),
        (torch.ones(1, 64, 96), "is 96×64 px, another aspect ratio than the 8×8 latent"),
    ],
)
def test_masks_that_do_not_fit_the_latent_are_refused(style_mamba, latent, mask, message):
    with pytest.raises(ValueError, match=message):
        stylize_latents(style_mamba, latent, mix_styles([embedding(1)], [1.0], [mask]))


def test_a_vae_crop_of_a_few_pixels_is_accepted(style_mamba, latent):
    mix = mix_styles([embedding(1)], [1.0], [torch.ones(1, 67, 64)])  # a 67-px-high image → 8 latent rows
    assert stylize_latents(style_mamba, latent, mix).shape == latent.shape


@pytest.mark.parametrize(
    "weights,message",
    [
        (torch.ones(1, 3), "must be \\(batch, 2\\) or \\(batch, 2, 8, 8\\) for 2 styles"),
        (torch.full((1, 2, 4, 4), 0.5), "cover \\(4, 4\\) latent pixels, the latent has \\(8, 8\\)"),
        (torch.full((3, 2), 0.5), "style_weights for 3 latents, the batch has 2"),
        (torch.tensor([[0.7, 0.7]]), "sum to 1 over the styles .* from 1.4 to 1.4"),
        (torch.tensor([[1.5, -0.5]]), "must be non-negative"),
    ],
)
def test_the_model_refuses_bad_style_weights(latent, weights, message):
    model = trained_like(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(latent, torch.randn(2, 8), style_weights=weights)


def test_a_mix_stands_in_for_a_style_where_one_point_is_needed():
    mix = mix_styles([embedding(1), embedding(2)], [1.0, 1.0])
    assert isinstance(mix, StyleMix)
    assert mix.target.shape == mix.source.shape == mix.direction.shape == (1, 8)
    torch.testing.assert_close(mix.direction.norm(), torch.tensor(1.0))
