"""Cross-modal AdaIN (StyleStudio, arXiv 2412.08503): the text branch keeps its layout, the image branch lends its statistics."""

import torch
from torch import Tensor


def cross_modal_adain(text: Tensor, style: Tensor, strength: float = 1.0, eps: float = 1e-5) -> Tensor:
    """Return ``lerp(T, (T - mu_T) / sigma_T * sigma_I + mu_I, strength)`` for ``T = text``, ``I = style``.

    Both tensors are ``(batch, tokens, channels)`` attention outputs (heads merged, before
    ``to_out``); mean and standard deviation are taken per sample and per channel over the
    spatial tokens. The population std is used: StyleStudio's code uses the unbiased one, but
    both tensors have the same token count, so the Bessel factor cancels in ``sigma_I / sigma_T``
    and a single token cannot produce NaN. AdaIN and the lerp are one affine map per channel,
    ``T * gain + bias``, applied in a single pass; statistics are taken in float32 because
    half-precision variances over thousands of tokens lose the small channels.
    """
    if text.shape != style.shape:
        raise ValueError(f"text and style attention outputs must share a shape, got {tuple(text.shape)} and {tuple(style.shape)}")
    t_var, t_mean = torch.var_mean(text.float(), dim=1, keepdim=True, correction=0)
    s_var, s_mean = torch.var_mean(style.float(), dim=1, keepdim=True, correction=0)
    scale = s_var.sqrt() / (t_var.sqrt() + eps)
    gain = 1.0 - strength + strength * scale
    bias = strength * (s_mean - t_mean * scale)
    return torch.addcmul(bias, text, gain).to(text.dtype)
