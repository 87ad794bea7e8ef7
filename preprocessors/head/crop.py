"""DECA's TestData crop: 68 landmarks (or a face box) -> similarity transform onto a 224×224 crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CROP_SIZE = 224
CROP_SCALE = 1.25


@dataclass
class Crop:
    image: torch.Tensor  # (3, 224, 224) in 0..1, E_flame's input
    tform: torch.Tensor  # (3, 3) similarity transform, photo pixels -> crop pixels (skimage convention)
    original_image: torch.Tensor  # (3, size, size) in 0..1: the photo as the hint frame sees it


def resize_photo(image: np.ndarray, size: int | None) -> np.ndarray:
    """The reference's first step: the photo resized (aspect ignored) to size×size, antialiased, back to uint8."""
    from skimage.transform import resize

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    if size is not None:
        image = (resize(image, (size, size), anti_aliasing=True) * 255.0).astype(np.uint8)
    return image


def box_from_landmarks(landmarks: np.ndarray) -> tuple[float, np.ndarray]:
    """(size, centre) of DECA's 'kpt68' box: the landmarks' extent × 1.1."""
    left, right = landmarks[:, 0].min(), landmarks[:, 0].max()
    top, bottom = landmarks[:, 1].min(), landmarks[:, 1].max()
    size = (right - left + bottom - top) / 2 * 1.1
    return size, np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])


def box_from_detector(box: tuple[float, float, float, float]) -> tuple[float, np.ndarray]:
    """(size, centre) of DECA's 'bbox' convention for a face detector's box (centre moved down by 0.12 size)."""
    left, top, right, bottom = box
    size = (right - left + bottom - top) / 2
    return size, np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + size * 0.12])


def crop_face(photo: np.ndarray, size_and_centre: tuple[float, np.ndarray], scale: float = CROP_SCALE,
              crop_size: int = CROP_SIZE) -> Crop:
    """Crop a (size×size-resized) uint8 photo around a face box; `tform` maps photo pixels to crop pixels."""
    from skimage.transform import estimate_transform, warp

    old_size, centre = size_and_centre
    size = int(old_size * scale)
    src = np.array([[centre[0] - size / 2, centre[1] - size / 2], [centre[0] - size / 2, centre[1] + size / 2],
                    [centre[0] + size / 2, centre[1] - size / 2]])
    dst = np.array([[0, 0], [0, crop_size - 1], [crop_size - 1, 0]])
    tform = estimate_transform("similarity", src, dst)
    image = photo / 255.0
    cropped = warp(image, tform.inverse, output_shape=(crop_size, crop_size))
    return Crop(torch.tensor(cropped.transpose(2, 0, 1)).float(), torch.tensor(tform.params).float(),
                torch.tensor(image.transpose(2, 0, 1)).float())
