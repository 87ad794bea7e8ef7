"""BiSeNet face parsing (face-parsing.PyTorch `79999_iter.pth`) and CapHuman's "face only" image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# background, ears, earring, neck, necklace, cloth, hair, hat: painted white in the CLIP input (CapHuman FaceParser)
FACE_ONLY_EXCLUDED_CLASSES = (0, 7, 8, 9, 14, 15, 16, 17, 18)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_parsing_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """facexlib's `BiSeNet(num_class=19)`, which has exactly the key layout of `79999_iter.pth`; loaded strictly."""
    from facexlib.parsing.bisenet import BiSeNet

    from caphuman_ext.safe_load import load_pickled_weights

    state = load_pickled_weights(path)  # no pickled code runs; sizes bounded by the file
    model = BiSeNet(num_class=19)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


def parse_face(model: torch.nn.Module, image: Image.Image) -> np.ndarray:
    """Per-pixel class labels (H, W) uint8: ToTensor + ImageNet normalisation, argmax of BiSeNet's first output."""
    parameter = next(model.parameters())
    pixels = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    batch = ((pixels - mean) / std)[None].to(parameter.device, parameter.dtype)
    with torch.no_grad():
        logits = model(batch)[0]
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


def paint_face_only(image: Image.Image, labels: np.ndarray) -> Image.Image:
    """The photo with every pixel of `FACE_ONLY_EXCLUDED_CLASSES` painted white."""
    array = np.array(image, dtype=np.uint8)
    array[np.isin(labels, FACE_ONLY_EXCLUDED_CLASSES)] = 255
    return Image.fromarray(array)
