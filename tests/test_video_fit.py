"""Fitting on a video clip: the temporal mixers train, the temporal losses run, decoding stays within a window."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba, new_style_mamba
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, fit_style
from comfyui_stylemamba.stylemamba.training.losses import LossWeights, video_weights
from comfyui_stylemamba.stylemamba.latent_families import VideoInputError

from builders import tiny_config, trained_like
from test_fit import image_encoder, style, vae  # noqa: F401 (the per-style fit's fixtures)

SMALL = LossWeights(num_crops=2, crop_size=12, mask_patch_size=4, patch=0.0)
TEMPORAL_TERMS = {"temporal_masked", "temporal_second_order", "temporal_consistency"}


def clip(frames: int, size: int = 16) -> torch.Tensor:
    """A smooth pan: each frame the same picture shifted one pixel further."""
    torch.manual_seed(4)
    wide = F.interpolate(torch.rand(1, 3, 4, 8), size=(size, size + frames), mode="bilinear")
    return torch.cat([wide[..., t : t + size] for t in range(frames)])


def tiny_model(channels: int = 4):
    return new_style_mamba(tiny_config(latent_channels=channels, style_dim=32, depth=1), text_encoder="tiny")


def video_settings(**overrides) -> FitSettings:
    values = dict(iterations=3, lr=5e-3, weights=video_weights(SMALL), video=True, frames_per_step=2)
    return FitSettings(**(values | overrides))


def counting(decode, calls: list):
    def wrapped(latents):
        calls.append(tuple(latents.shape))
        return decode(latents)
    return wrapped


def test_video_fit_trains_the_temporal_mixers_with_the_temporal_losses(vae, image_encoder, style):
    start, calls = tiny_model(), []
    result = fit_style(start, clip(6), style, vae.encode, counting(vae.decode, calls), image_encoder, video_settings(iterations=4))
    assert TEMPORAL_TERMS <= set(result.history[0]) and "masked" not in result.history[0]
    assert all(h[name] >= 0 and torch.isfinite(torch.tensor(h[name])) for h in result.history for name in TEMPORAL_TERMS)
    assert result.history[0]["temporal_consistency"] == 0.0  # zero-gated mixers and head: no change yet
    assert torch.count_nonzero(start.model.temporal[0].out_proj.weight) == 0  # the input model is left alone
    # The zero head passes no gradient at step 0, so update 1 leaves the temporal layers at zero; the kept weights are
    # from an update that moved them, whichever was lowest on the fixed evaluation.
    assert result.kept_step >= 2 and "from update 2" in result.kept_reason
    assert torch.count_nonzero(result.style_mamba.model.temporal[0].out_proj.weight) > 0
    assert result.style_mamba.training["latent_frames"] == 6 and result.style_mamba.training["settings"]["video"] is True
    # frames_per_step bounds every decode: the 1-frame set-up reference, the evaluation's content window, then per
    # step a 2-frame content and styled window and the evaluation's styled window, and the last update's evaluation.
    assert calls == [(1, 4, 8, 8)] + [(2, 4, 8, 8)] * (1 + 3 * 4 + 1)
    for keep in ("best", "last"):  # one update reaches the head only: said, not hidden
        once = fit_style(start, clip(6), style, vae.encode, vae.decode, image_encoder, video_settings(iterations=1, keep=keep))
        assert once.kept_step == 1 and "no update moved the temporal layers" in once.kept_reason
        assert torch.count_nonzero(once.style_mamba.model.temporal[0].out_proj.weight) == 0


def test_image_fit_leaves_the_temporal_mixers_at_zero(vae, image_encoder, style):
    result = fit_style(tiny_model(), clip(2), style, vae.encode, vae.decode, image_encoder, FitSettings(iterations=2, lr=5e-3, weights=SMALL))
    assert not TEMPORAL_TERMS & set(result.history[0])
    model = result.style_mamba.model
    assert torch.count_nonzero(model.head.weight) > 0
    assert all(torch.count_nonzero(mixer.out_proj.weight) == 0 for mixer in model.temporal)
    fresh = tiny_model().model.temporal.state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in model.temporal.state_dict().items())


class FakeVideoVAE:
    """A Wan-like codec (16 channels, 4 frames per latent frame, 2× down): ComfyUI's 5-D video latents, differentiably."""

    def __init__(self):
        torch.manual_seed(0)
        self.down, self.up = torch.randn(16, 3) / 3, torch.randn(3, 16) / 4

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        groups = torch.cat([frames[:1], frames[1:].unflatten(0, (-1, 4)).mean(1)])  # frame 0 alone, then 4 per latent
        pooled = F.avg_pool2d(groups, 2)
        return torch.einsum("oc,tchw->othw", self.down, pooled)[None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = torch.cat([latents[:, :, :1], latents[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        images = torch.einsum("co,bothw->bcthw", self.up, frames)
        return torch.sigmoid(F.interpolate(images, scale_factor=(1, 2, 2)))


def test_a_video_vae_fit_honours_its_temporal_compression(image_encoder, style):
    codec, calls = FakeVideoVAE(), []
    settings = video_settings(iterations=4, frames_per_step=2)
    start = StyleMamba(model=trained_like(tiny_config(latent_channels=16, style_dim=32, depth=1)), text_encoder="tiny")
    result = fit_style(start, clip(13), style, codec.encode, counting(codec.decode, calls), image_encoder, settings)
    assert result.style_mamba.training["latent_frames"] == 4  # 13 = 4·3 + 1 frames
    assert calls == [(1, 16, 1, 8, 8)] + [(1, 16, 2, 8, 8)] * 14  # windows of 2 latent frames = 5 video frames each
    # A trained head passes gradient to the temporal projection from step 0 on.
    assert result.kept_step >= 1 and torch.count_nonzero(result.style_mamba.model.temporal[0].out_proj.weight) > 0
    with pytest.raises(VideoInputError, match=r"a Wan 2.1 / Wan 2.2-14B VAE packs 4 video frames .* \(…, 9, 13, …\); this one has 12"):
        fit_style(tiny_model(16), clip(12), style, lambda f: codec.encode(f[:9]), codec.decode, image_encoder, settings)


def test_bad_video_input_is_named(vae, image_encoder, style):
    with pytest.raises(VideoInputError, match=r"a video fit needs at least 3 latent frames \(the temporal second-order term compares 3\); the 1 frame\(s\) given encode to 1"):
        fit_style(tiny_model(), clip(1), style, vae.encode, vae.decode, image_encoder, video_settings())
    no_second_order = video_settings(weights=dataclasses.replace(video_weights(SMALL), temporal_second_order=0.0))
    with pytest.raises(VideoInputError, match="a video fit needs at least 2 latent frames; the 1 frame"):
        fit_style(tiny_model(), clip(1), style, vae.encode, vae.decode, image_encoder, no_second_order)
    with pytest.raises(ValueError, match=r"the temporal losses \(temporal_masked, temporal_second_order, temporal_consistency\) need a video fit"):
        fit_style(tiny_model(), clip(3), style, vae.encode, vae.decode, image_encoder, video_settings(video=False))
    with pytest.raises(ValueError, match="frames_per_step must be at least 1, got 0"):
        video_settings(frames_per_step=0)
    with pytest.raises(ValueError, match=r"video frames must be \(frames, 3, height, width\) in \[0, 1\], got \(3, 16, 16\)"):
        fit_style(tiny_model(), clip(3)[:, 0], style, vae.encode, vae.decode, image_encoder, video_settings())
    with pytest.raises(VideoInputError, match=r"encoded 3 frames into latents of shape \(1, 4, 8, 8\)"):
        fit_style(tiny_model(), clip(3), style, lambda f: vae.encode(f[:1]), vae.decode, image_encoder, video_settings())


def test_video_weights_switch_the_per_frame_mask_to_one_mask_for_all_frames():
    weights = video_weights(LossWeights(masked=300.0))
    assert (weights.masked, weights.temporal_masked) == (0.0, 300.0)
    assert weights.temporal_second_order == weights.temporal_consistency == 150.0
    assert LossWeights().temporal_masked == LossWeights().temporal_second_order == LossWeights().temporal_consistency == 0.0
    with pytest.raises(ValueError, match="LossWeights.temporal_consistency must be non-negative"):
        LossWeights(temporal_consistency=-1.0)


def test_the_temporal_masked_loss_hides_the_same_patches_in_every_frame():
    from comfyui_stylemamba.stylemamba.training.losses import masked_directional_loss

    class Recording:
        seen: list[torch.Tensor] = []

        def encode(self, images):
            self.seen.append(images)
            return images.flatten(1)[:, :8]

    frames = torch.ones(3, 3, 16, 16)
    for same_mask in (True, False):
        encoder = Recording()
        encoder.seen = []
        masked_directional_loss(encoder, frames, frames, torch.ones(1, 8), 0.5, 4, torch.Generator().manual_seed(0), same_mask=same_mask)
        hidden = encoder.seen[0] == 0.5
        assert hidden[0].sum() == 3 * 8 * 16  # half of the 16 patches of 4×4 pixels, in 3 channels
        assert torch.equal(hidden[0], hidden[1]) and torch.equal(hidden[1], hidden[2]) if same_mask else not torch.equal(hidden[0], hidden[1])
