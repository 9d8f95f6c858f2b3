"""Gradients through a model that was built under ``torch.inference_mode()``.

ComfyUI runs every node under inference mode, so a checkpoint loaded by a loader node holds inference tensors, which
autograd refuses to save for backward even when only an input (null-text or concept embedding) is optimised.
"""

from __future__ import annotations

import torch


def allow_autograd(module: torch.nn.Module) -> int:
    """Replace the module's inference-mode parameters and buffers by normal copies (same values, no gradient); returns
    how many were replaced. Normal tensors work in inference mode too, so the model is unchanged for everyone else."""
    replaced = 0
    with torch.inference_mode(False):
        for child in module.modules():
            for name, parameter in list(child._parameters.items()):
                if parameter is not None and parameter.is_inference():
                    child._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
                    replaced += 1
            for name, buffer in list(child._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    child._buffers[name] = buffer.clone()
                    replaced += 1
    return replaced
