"""Small synthetic inputs shared by test modules: a tiny CLIP vision tower and a base64 PNG."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image


def tiny_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small random CLIPVisionModel (224 px, patch 14: 257 tokens), as a state dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                              image_size=224, patch_size=14, hidden_act="quick_gelu")
    return CLIPVisionModel(config).state_dict()


def b64_png(size=(32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
