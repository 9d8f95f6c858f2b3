"""The style a fit learns when the user gives style images: text, images, or both.

An image style is ImageStyleEncode's (``encode_reference_style``) with the content images as its source,
so the losses aim along the content→style image direction: the mean unit SigLIP embedding of the style
images minus that of the content images, normalised. Text and images together are the equal-weight
StyleMix of the two styles: the model is conditioned on their normalised mean target and the losses aim
from their mean source to it, so StyleMix(text, image) with equal weights names the same point later.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from ..encoders import ImageEncoder
from ..image_style import encode_reference_style, image_embedding
from ..mixing import mix_styles
from ..style import StyleEmbedding


def content_direction_style(encoder: ImageEncoder, style_images: Sequence[torch.Tensor], content: torch.Tensor) -> StyleEmbedding:
    """The style of ``style_images`` (batches of any size, 1/3/4 channels) with the direction starting at ``content``."""
    return encode_reference_style(encoder, style_images, image_embedding(encoder, [content]))


def combine_styles(text_style: StyleEmbedding, image_style: StyleEmbedding) -> StyleEmbedding:
    """Text and image style as one: the target, source and direction of their equal-weight ``StyleMix``."""
    mix = mix_styles([text_style, image_style], [1.0, 1.0])
    description = f"{text_style.description} + {image_style.description}"
    return dataclasses.replace(text_style, target=mix.target, source=mix.source, description=description)


def fit_target_style(
    text_style: StyleEmbedding | None, encoder: ImageEncoder, style_images: Sequence[torch.Tensor], content: torch.Tensor,
) -> StyleEmbedding:
    """The style a fit learns: the text style, the image style (when ``style_images`` holds any image) or both combined."""
    count = sum(batch.shape[0] for batch in style_images)
    if text_style is None and count == 0:
        raise ValueError("no style to fit: give a style text and/or at least one style image")
    if count == 0:
        return text_style
    image_style = content_direction_style(encoder, style_images, content)
    return image_style if text_style is None else combine_styles(text_style, image_style)
