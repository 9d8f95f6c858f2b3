"""Spatio-temporal fusion of video latents: identity when fresh, causal, chunk-exact, old checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfyui_stylemamba.stylemamba import checkpoint as ckpt
from comfyui_stylemamba.stylemamba import temporal as temporal_module
from comfyui_stylemamba.stylemamba.checkpoint import CheckpointError, StyleMamba, load_checkpoint, save_checkpoint
from comfyui_stylemamba.stylemamba.model import ModelInputError, StyleFusionModel
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.stylize import stylize_latents
from comfyui_stylemamba.stylemamba.latent_families import VIDEO_FAMILIES, VideoInputError
from comfyui_stylemamba.stylemamba.video_latents import video_mask

from builders import tiny_config, trained_like

ENCODER = "google/siglip-base-patch16-224"


def with_trained_temporal(model: StyleFusionModel, seed: int = 1) -> StyleFusionModel:
    """Give the zero-initialised temporal output projections random values, as a video fit would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mixer in model.temporal:
            mixer.out_proj.weight.copy_(torch.randn(mixer.out_proj.weight.shape, generator=gen) * 0.3)
    return model


def style_mamba(model: StyleFusionModel) -> StyleMamba:
    return StyleMamba(model=model.eval(), text_encoder=ENCODER)


def style_for(model: StyleFusionModel) -> StyleEmbedding:
    embedding = torch.randn(1, model.config.style_dim, generator=torch.Generator().manual_seed(7))
    return StyleEmbedding(target=embedding, source=-embedding, description="ink wash", encoder=ENCODER)


def video(batch=2, channels=4, frames=7, height=6, width=10, seed=0) -> torch.Tensor:
    return torch.randn(batch, channels, frames, height, width, generator=torch.Generator().manual_seed(seed))


def test_fresh_temporal_weights_give_frame_by_frame_exactly():
    """A model trained on images (spatial weights trained, temporal ones fresh) styles video exactly per frame."""
    sm = style_mamba(trained_like(tiny_config()))
    latent, style = video(), style_for(sm.model)
    across = stylize_latents(sm, latent, style, temporal="across frames", batch_size=3)
    per_frame = stylize_latents(sm, latent, style, temporal="frame by frame", batch_size=3)
    assert (per_frame - latent).abs().max() > 0.1  # the spatial model really styles
    assert torch.equal(across, per_frame)
    # and frame by frame is the image path on each frame (batched differently, so up to rounding)
    torch.testing.assert_close(per_frame[:, :, 4], stylize_latents(sm, latent[:, :, 4], style), rtol=1e-5, atol=1e-5)


def test_trained_temporal_mixing_is_causal_and_changes_the_video():
    sm = style_mamba(with_trained_temporal(trained_like(tiny_config())))
    latent, style = video(), style_for(sm.model)
    across = stylize_latents(sm, latent, style, temporal="across frames", batch_size=7)
    per_frame = stylize_latents(sm, latent, style, temporal="frame by frame", batch_size=7)
    assert (across - per_frame).abs().max() > 1e-2
    later_changed = latent.clone()
    later_changed[:, :, 5:] += 1.0
    again = stylize_latents(sm, later_changed, style, temporal="across frames", batch_size=7)
    assert torch.equal(again[:, :, :5], across[:, :, :5])  # frames never see the future
    assert (again[:, :, 5:] - across[:, :, 5:]).abs().max() > 1e-2


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked(chunk):
    sm = style_mamba(with_trained_temporal(trained_like(tiny_config())))
    latent, style = video(frames=7), style_for(sm.model)
    whole = stylize_latents(sm, latent, style, batch_size=7)
    chunked = stylize_latents(sm, latent, style, batch_size=chunk)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_working_memory_is_bounded_by_the_chunk(monkeypatch):
    """However long the video, the scans see at most one chunk of frames and carry a state of fixed size."""
    seen = []
    scan = temporal_module.temporal_scan

    def recording(u, *args, **kwargs):
        y, last = scan(u, *args, **kwargs)
        seen.append((u.shape[2], tuple(last.shape)))
        return y, last

    monkeypatch.setattr(temporal_module, "temporal_scan", recording)
    sm = style_mamba(with_trained_temporal(trained_like(tiny_config())))
    for frames in (4, 24):
        seen.clear()
        stylize_latents(sm, video(batch=1, frames=frames), style_for(sm.model), batch_size=4)
        assert max(t for t, _ in seen) == 4
        assert {state for _, state in seen} == {(1, 1, 32, 3, 5, 4)}  # (b, K, inner, grid h, grid w, d_state)
        assert len(seen) == 2 * frames // 4  # 2 blocks per chunk


def test_temporal_weights_train_on_video():
    model = with_trained_temporal(trained_like(tiny_config(depth=1)))
    latent = video(batch=1, frames=3)
    style = torch.randn(1, 8)
    context = temporal_module.TemporalContext(frames=3)
    frames = latent.movedim(1, 2).flatten(0, 1)
    model(frames, style, temporal=context).square().mean().backward()
    missing = [name for name, p in model.temporal.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == []


def test_one_frame_video_is_styled_as_that_frame():
    sm = style_mamba(trained_like(tiny_config()))
    latent, style = video(frames=1), style_for(sm.model)
    styled = stylize_latents(sm, latent, style)
    torch.testing.assert_close(styled[:, :, 0], stylize_latents(sm, latent[:, :, 0], style), rtol=1e-5, atol=1e-5)
    assert torch.equal(styled, stylize_latents(sm, latent, style, temporal="frame by frame"))


def old_checkpoint(tmp_path, model: StyleFusionModel, version: str, drop_temporal: bool):
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not (drop_temporal and k.startswith("temporal."))}
    metadata = {**ckpt.checkpoint_metadata(style_mamba(model)), "format_version": version}
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_image_only_checkpoint_loads_with_identity_temporal_mixers(tmp_path):
    model = trained_like(tiny_config())
    loaded = load_checkpoint(old_checkpoint(tmp_path, with_trained_temporal(model), "1", drop_temporal=True))
    assert all(torch.equal(m.out_proj.weight, torch.zeros_like(m.out_proj.weight)) for m in loaded.model.temporal)
    latent, style = video(), style_for(loaded.model)
    assert torch.equal(
        stylize_latents(loaded, latent, style, temporal="across frames"), stylize_latents(loaded, latent, style, temporal="frame by frame")
    )
    assert torch.equal(loaded.model.blocks[0].modulation.weight, model.blocks[0].modulation.weight)


def test_video_checkpoint_round_trips_the_temporal_weights(tmp_path):
    model = with_trained_temporal(trained_like(tiny_config()))
    loaded = load_checkpoint(save_checkpoint(style_mamba(model), tmp_path / "video.safetensors"))
    assert read_format(tmp_path / "video.safetensors") == "2"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def read_format(path) -> str:
    return ckpt.read_metadata(path)["format_version"]


@pytest.mark.parametrize(
    "version, drop, message",
    [
        ("1", False, "unexpected temporal.0.A_log"),  # an image-only format cannot hold temporal weights
        ("2", True, "missing temporal.0.A_log"),  # a video-format file must hold them all
    ],
)
def test_checkpoint_temporal_weights_must_fit_the_format(tmp_path, version, drop, message):
    path = old_checkpoint(tmp_path, trained_like(tiny_config()), version, drop_temporal=drop)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_across_frames_on_an_image_latent_is_refused():
    sm = style_mamba(trained_like(tiny_config()))
    with pytest.raises(VideoInputError, match=r"temporal='across frames' needs a video LATENT .* this one is 4-D \(2, 4, 6, 10\)"):
        stylize_latents(sm, torch.randn(2, 4, 6, 10), style_for(sm.model), temporal="across frames")
    with pytest.raises(ValueError, match="temporal must be one of 'auto', 'across frames', 'frame by frame', got 'sometimes'"):
        stylize_latents(sm, video(), style_for(sm.model), temporal="sometimes")


def test_video_channel_mismatch_names_the_video_families():
    sm = style_mamba(trained_like(tiny_config(latent_channels=16)))
    with pytest.raises(ModelInputError) as error:
        stylize_latents(sm, video(channels=48), style_for(sm.model))
    assert str(error.value) == (
        "this StyleMamba model expects 16-channel latents (from a Wan 2.1 / Wan 2.2-14B or HunyuanVideo or Cosmos "
        "video VAE for video), but the video LATENT has 48 channels: it comes from a Wan 2.2-5B video VAE. "
        "Use a StyleMamba model trained for 48-channel latents or the matching VAE."
    )


def test_families_follow_comfyui_temporal_compression():
    compression = {family.name: family.temporal for family in VIDEO_FAMILIES}
    assert compression == {
        "Wan 2.1 / Wan 2.2-14B": 4, "Wan 2.2-5B": 4, "HunyuanVideo": 4, "LTX-Video": 8, "Mochi": 6, "Cosmos": 8,
    }
    wan = VIDEO_FAMILIES[0]
    assert wan.latent_frames(81) == 21 and wan.video_frames(21) == 81
    with pytest.raises(VideoInputError, match=r"Wan 2.1 / Wan 2.2-14B VAE packs 4 video frames .* \(…, 77, 81, …\); this one has 80"):
        wan.latent_frames(80)


def test_video_masks_per_video_per_latent_frame_and_per_video_frame():
    latent = torch.zeros(1, 16, 3, 2, 2)
    one = video_mask(torch.ones(4, 4) * 0.5, latent)
    assert one.shape == (1, 1, 3, 2, 2) and torch.equal(one, torch.full_like(one, 0.5))
    per_latent_frame = video_mask(torch.arange(3.0)[:, None, None].expand(3, 4, 4) / 2, latent)
    assert per_latent_frame[0, 0, :, 0, 0].tolist() == [0.0, 0.5, 1.0]
    # 9 video frames = 4·(3 − 1) + 1 (Wan/HunyuanVideo): latent frame 1 averages video frames 1–4, frame 2 5–8
    per_video_frame = video_mask(torch.arange(9.0)[:, None, None].expand(9, 4, 4) / 8, latent)
    assert per_video_frame[0, 0, :, 0, 0].tolist() == pytest.approx([0.0, 2.5 / 8, 6.5 / 8])
    with pytest.raises(VideoInputError, match=r"the mask has 5 entries; .* give 1 mask, 1 \(one per video\), 3 \(one per latent frame\), or 9 video frames, 17 video frames"):
        video_mask(torch.ones(5, 4, 4), latent)


def test_style_fuse_node_takes_the_temporal_options_as_optional_inputs():
    from comfyui_stylemamba.nodes.stylemamba_nodes import StyleFuse

    optional = StyleFuse.INPUT_TYPES()["optional"]
    assert optional["temporal"][0] == ["auto", "across frames", "frame by frame"] and optional["chunk_frames"][1]["default"] == 16
    sm = style_mamba(with_trained_temporal(trained_like(tiny_config())))
    latent = {"samples": video(batch=1, frames=9), "batch_index": [0]}
    style = style_for(sm.model)
    with torch.inference_mode():  # ComfyUI runs nodes like this
        (saved_workflow,) = StyleFuse().fuse(sm, latent, style, 1.0)  # a workflow saved before the options existed
        (chunked,) = StyleFuse().fuse(sm, latent, style, 1.0, None, "auto", 2)
        (per_frame,) = StyleFuse().fuse(sm, latent, style, 1.0, None, "frame by frame", 2)
        with pytest.raises(VideoInputError, match="needs a video LATENT"):
            StyleFuse().fuse(sm, {"samples": torch.randn(1, 4, 6, 10)}, style, 1.0, None, "across frames")
    assert chunked["batch_index"] == [0]
    torch.testing.assert_close(chunked["samples"], saved_workflow["samples"], rtol=1e-5, atol=1e-5)
    assert (per_frame["samples"] - saved_workflow["samples"]).abs().max() > 1e-2


def test_flow_free_temporal_terms_and_flicker():
    from comfyui_stylemamba.stylemamba.training.temporal import (
        flicker,
        temporal_consistency_loss,
        temporal_second_order_loss,
    )

    content = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 2, 5, 3, 3)  # changes by 1 per frame
    steady = content + 3.0  # a style change that is the same in every frame
    ramp = content + 0.5 * torch.arange(5.0).view(1, 1, 5, 1, 1)  # drifts smoothly
    flickering = content + 0.5 * torch.tensor([1.0, -1, 1, -1, 1]).view(1, 1, 5, 1, 1)
    assert temporal_consistency_loss(steady, content).item() == 0 and flicker(steady, content) == 0
    assert temporal_consistency_loss(ramp, content).item() == pytest.approx(0.25)  # (0.5)² / 1²
    assert flicker(flickering, content) == pytest.approx(1.0)  # |±1| against a change of 1
    wobble = content + 0.5 * torch.tensor([0.0, 0, 1, 0, 0]).view(1, 1, 5, 1, 1)
    content2 = content + 0.1 * torch.arange(5.0).square().view(1, 1, 5, 1, 1)  # second difference 0.2
    assert temporal_second_order_loss(ramp + 0.1 * torch.arange(5.0).square().view(1, 1, 5, 1, 1), content2).item() == pytest.approx(0, abs=1e-10)
    assert temporal_second_order_loss(wobble + (content2 - content), content2).item() > 1.0
    with pytest.raises(VideoInputError, match=r"styled has 1 frame\(s\); a temporal term of order 1 needs at least 2"):
        temporal_consistency_loss(content[:, :, :1], content[:, :, :1])


def test_warp_undoes_a_known_shift_on_the_interior():
    from comfyui_stylemamba.stylemamba.training.temporal import warp

    previous = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    current = torch.zeros_like(previous)
    current[..., 1:, 2:] = previous[..., :-1, :-2]  # the camera moved: content went 2 px right, 1 px down
    flow = torch.tensor([-2.0, -1.0]).view(1, 2, 1, 1).expand(2, 2, 8, 10)
    warped, visible = warp(previous, flow)
    interior = torch.zeros(2, 1, 8, 10, dtype=torch.bool)
    interior[..., 1:, 2:] = True
    assert torch.equal(visible, interior)
    torch.testing.assert_close(warped[..., 1:, 2:], current[..., 1:, 2:], rtol=0, atol=1e-6)
    # Sub-pixel: a ramp sampled half a pixel to the right reads half a step more.
    ramp = torch.arange(10.0).expand(1, 1, 8, 10)
    half, seen = warp(ramp, torch.tensor([0.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 8, 10))
    torch.testing.assert_close(half[..., :-1], ramp[..., :-1] + 0.5, rtol=0, atol=1e-5)
    assert seen[..., :-1].all() and not seen[..., -1].any()


def test_pan_zoom_flow_is_the_clips_motion():
    """Carried along the camera flow, each frame of a pan+zoom clip lands on the next one: a warping error
    at interpolation level, far below the frame-to-frame change, and the same at the 8×-pooled latent scale."""
    from builders import pan_zoom_clip, pan_zoom_flow

    from comfyui_stylemamba.stylemamba.training.temporal import warping_error

    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0)),
                                             size=(96, 128), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    clip = pan_zoom_clip(smooth, 5, 48, 64).permute(3, 0, 1, 2)[None]  # (1, 3, 5, 48, 64)
    flow = pan_zoom_flow(5, 48, 64)[None]
    assert flow.shape == (1, 4, 2, 48, 64) and flow.abs().max() > 1.5  # the camera really moves
    assert warping_error(clip, flow) < 0.02 * warping_error(clip, torch.zeros_like(flow))  # measured 0.009
    # 8× pooled (a latent's grid): bilinear sampling between coarse pixels leaves a floor, still far below no flow.
    latent = torch.nn.functional.avg_pool2d(pan_zoom_clip(smooth, 5, 96, 128).permute(0, 3, 1, 2), 8).movedim(0, 1)[None]
    assert warping_error(latent, pan_zoom_flow(5, 12, 16)[None]) < 0.25 * warping_error(latent, torch.zeros(1, 4, 2, 12, 16))
    with pytest.raises(VideoInputError, match=r"flow must be \(batch, frames - 1, 2, height, width\) = \(1, 4, 2, 48, 64\) "
                                              r"for styled \(1, 3, 5, 48, 64\), got \(1, 5, 2, 48, 64\)"):
        warping_error(clip, torch.zeros(1, 5, 2, 48, 64))
