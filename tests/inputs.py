"""Small synthetic inputs shared by test modules: a tiny CLIP vision tower, encoded images, a PNG pixel bomb."""

from __future__ import annotations

import base64
import io
import struct
import zlib

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


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side² pixels in ~50 kB (all black): decodable if nothing checks the declared size."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
