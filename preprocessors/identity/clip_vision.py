"""CLIP ViT-L/14 vision tokens of the face-only image, with CLIPProcessor's preprocessing written out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from safe_files.rng_guard import rng_untouched

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


def clip_pixel_values(image: Image.Image, size: int = CLIP_SIZE) -> torch.Tensor:
    """(1, 3, size, size) as transformers 4.30's CLIPImageProcessor: shortest side -> `size` (PIL bicubic, uint8),
    centre crop, /255, CLIP mean/std."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    resized = np.asarray(image.convert("RGB").resize(new_size, Image.BICUBIC), dtype=np.float32)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top: top + size, left: left + size] / 255.0
    normalised = (crop - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]


def _config_from_state(state: Mapping[str, torch.Tensor]):
    """A CLIPVisionConfig read off the weights (ViT-L/14 for the real tower, anything for test towers)."""
    from transformers import CLIPVisionConfig

    patch = state["embeddings.patch_embedding.weight"]
    hidden, _, patch_size, _ = patch.shape
    positions = state["embeddings.position_embedding.weight"].shape[0]
    grid = int(round((positions - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    intermediate = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    heads = max(1, hidden // 64)
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=grid * patch_size, patch_size=patch_size,
                            projection_dim=hidden, hidden_act="quick_gelu", layer_norm_eps=1e-5)


@rng_untouched()
def build_clip_vision(state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None, num_attention_heads: int | None = None):
    """transformers `CLIPVisionModel` from a state dict keyed `vision_model.*` (transformers 4, as caphuman.ckpt
    stores it) or without that prefix (transformers 5); no hub access.

    The real tower is ViT-L/14: hidden 1024, 24 layers, 16 heads (= hidden / 64, as derived here).
    """
    from transformers import CLIPVisionModel

    prefix = "vision_model."
    state = {k.removeprefix(prefix): v for k, v in state.items() if not k.endswith("position_ids")}
    config = _config_from_state(state)
    if num_attention_heads:
        config.num_attention_heads = num_attention_heads
    model = CLIPVisionModel(config)
    if any(k.startswith(prefix) for k in model.state_dict()):
        state = {prefix + k: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"CLIP vision weights do not fit a CLIPVisionModel: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def clip_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """`last_hidden_state` (B, 1 + patches, hidden): what CapHuman's `img_linear` takes."""
    parameter = next(model.parameters())
    with torch.no_grad():
        out = model(pixel_values=pixel_values.to(parameter.device, parameter.dtype))
    return out.last_hidden_state
