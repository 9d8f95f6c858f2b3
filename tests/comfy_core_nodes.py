"""Socket types of the ComfyUI core nodes our example workflows use (facts from ComfyUI's nodes.py).

Maps node type → (input socket name → type, output types). Widget-only inputs are not listed.
"""

CORE_NODES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "LoadImage": ({}, ("IMAGE", "MASK")),
    "LoadImageMask": ({}, ("MASK",)),
    "InvertMask": ({"mask": "MASK"}, ("MASK",)),
    "VAELoader": ({}, ("VAE",)),
    "VAEEncode": ({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE"}, ()),
    "PreviewImage": ({"images": "IMAGE"}, ()),
    "CheckpointLoaderSimple": ({}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"clip": "CLIP"}, ("CONDITIONING",)),
    "CLIPVisionLoader": ({}, ("CLIP_VISION",)),
    "EmptyLatentImage": ({}, ("LATENT",)),
    "KSampler": (
        {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
        ("LATENT",),
    ),
    "ControlNetLoader": ({}, ("CONTROL_NET",)),
    "ControlNetApplyAdvanced": (
        {"positive": "CONDITIONING", "negative": "CONDITIONING", "control_net": "CONTROL_NET", "image": "IMAGE", "vae": "VAE"},
        ("CONDITIONING", "CONDITIONING"),
    ),
    "Canny": ({"image": "IMAGE"}, ("IMAGE",)),
    "ImageScale": ({"image": "IMAGE"}, ("IMAGE",)),
    "ImageQuantize": ({"image": "IMAGE"}, ("IMAGE",)),  # comfy_extras/nodes_post_processing.py
    "LoraLoader": ({"model": "MODEL", "clip": "CLIP"}, ("MODEL", "CLIP")),
    # Flux: nodes.py loaders and comfy_extras/nodes_flux.py, nodes_sd3.py
    "UNETLoader": ({}, ("MODEL",)),
    "DualCLIPLoader": ({}, ("CLIP",)),
    "TripleCLIPLoader": ({}, ("CLIP",)),
    "StyleModelLoader": ({}, ("STYLE_MODEL",)),
    "FluxGuidance": ({"conditioning": "CONDITIONING"}, ("CONDITIONING",)),
    "EmptySD3LatentImage": ({}, ("LATENT",)),
    # comfy_extras/nodes_video.py; CreateVideo's fps is a FLOAT widget that also takes a link
    "LoadVideo": ({}, ("VIDEO",)),
    "GetVideoComponents": ({"video": "VIDEO"}, ("IMAGE", "AUDIO", "FLOAT")),
    "CreateVideo": ({"images": "IMAGE", "fps": "FLOAT", "audio": "AUDIO"}, ("VIDEO",)),
    "SaveVideo": ({"video": "VIDEO"}, ()),
}
