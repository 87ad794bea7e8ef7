"""Where the face is, for DECA's crop: face_alignment's 68 FAN landmarks when available, else MTCNN's box.

DECA itself treats the two differently (TestData.bbox2point): landmark extent × 1.1 ('kpt68'), or a detector box
whose centre moves down by 0.12 × its size ('bbox'). MTCNN boxes (facenet-pytorch, weights inside its wheel) use the
'bbox' convention, as DECA does for detector boxes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .crop import box_from_detector, box_from_landmarks


class NoHeadFoundError(ValueError):
    """No face in a head photo."""


_FAN = None
_MTCNN = None


def _fan():
    """face_alignment's FAN, only if importable and its weights are already on disk (it downloads on init)."""
    global _FAN
    if _FAN is None:
        try:
            import face_alignment

            _FAN = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device="cpu",
                                                flip_input=False)
        except Exception:  # noqa: BLE001 - not installed, or its weights cannot be fetched: MTCNN instead
            _FAN = False
    return _FAN or None


def _mtcnn():
    global _MTCNN
    if _MTCNN is None:
        from facenet_pytorch import MTCNN

        _MTCNN = MTCNN(keep_all=True, device="cpu")
    return _MTCNN


def face_region(photo: np.ndarray, use_fan: bool = True) -> tuple[tuple[float, np.ndarray], str]:
    """((size, centre), method) of the largest face in a uint8 RGB photo, in DECA's conventions."""
    fan = _fan() if use_fan else None
    if fan is not None:
        found = fan.get_landmarks(photo)
        if found:
            landmarks = max(found, key=lambda p: np.ptp(p[:, 0]) * np.ptp(p[:, 1]))
            return box_from_landmarks(landmarks[:, :2]), "fan"
    boxes, _ = _mtcnn().detect(Image.fromarray(photo))
    if boxes is None or len(boxes) == 0:
        raise NoHeadFoundError("no face was found in the photo: use one where the face is clearly visible")
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return box_from_detector(tuple(float(v) for v in box)), "mtcnn"
