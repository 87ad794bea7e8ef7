"""BiSeNet face parsing (face-parsing.PyTorch `79999_iter.pth`) and CapHuman's "face only" image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safe_files.rng_guard import rng_untouched

# background, ears, earring, neck, necklace, cloth, hair, hat: painted white in the CLIP input (CapHuman FaceParser)
FACE_ONLY_EXCLUDED_CLASSES = (0, 7, 8, 9, 14, 15, 16, 17, 18)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@rng_untouched()
def load_parsing_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """facexlib's `BiSeNet(num_class=19)`, which has exactly the key layout of `79999_iter.pth`; loaded strictly."""
    from facexlib.parsing.bisenet import BiSeNet

    from safe_files.weights import load_pickled_weights

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


Box = tuple[float, float, float, float]


def _chebyshev(box: Box, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance of each pixel centre from the box centre, in units of the box's larger side (max norm)."""
    x0, y0, x1, y1 = box
    size = max(x1 - x0, y1 - y0, 1e-6)
    return np.maximum(np.abs(xs - (x0 + x1) / 2), np.abs(ys - (y0 + y1) / 2)) / size


def one_face_region(shape: tuple[int, int], boxes: list[Box], chosen: Box, reach: float = 1.0) -> np.ndarray:
    """(H, W) bool: the pixels that belong to the `chosen` face of a photo with several faces.

    A pixel belongs to it when it lies within `reach` face sizes of its centre (a square of side 2·reach·size,
    forehead and chin included) and no other face's centre is nearer, distances in units of each face's size.
    """
    x0, y0, x1, y1 = chosen
    half = reach * max(x1 - x0, y1 - y0)
    top, bottom = max(0, int(np.floor((y0 + y1) / 2 - half))), min(shape[0], int(np.ceil((y0 + y1) / 2 + half)) + 1)
    left, right = max(0, int(np.floor((x0 + x1) / 2 - half))), min(shape[1], int(np.ceil((x0 + x1) / 2 + half)) + 1)
    region = np.zeros(shape, dtype=bool)
    if top >= bottom or left >= right:
        return region
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5  # only the square around the chosen face
    own = _chebyshev(chosen, xs, ys)
    inside = own <= reach
    for box in boxes:
        if tuple(box) != tuple(chosen):
            inside &= own <= _chebyshev(box, xs, ys)
    region[top:bottom, left:right] = inside
    return region


def keep_one_face(labels: np.ndarray, boxes: list[Box], chosen: Box) -> np.ndarray:
    """Parsing labels with every pixel outside the chosen face's region set to background (0)."""
    return np.where(one_face_region(labels.shape, boxes, chosen), labels, 0).astype(labels.dtype)


def face_window(size: tuple[int, int], box: Box) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) of side min(W, H) centred on the box, moved inside the photo.

    CLIP sees a photo's centred min(W, H) square; with several faces the square follows the chosen face instead,
    at the same scale."""
    width, height = size
    side = min(width, height)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side
