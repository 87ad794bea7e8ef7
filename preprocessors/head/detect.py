"""Where the face is, for DECA's crop: the face the whole unit uses (`choose_face`: MTCNN boxes of the photo,
largest first, shared with FaceNet and face parsing), refined by face_alignment's 68 FAN landmarks when available.

DECA itself treats the two differently (TestData.bbox2point): landmark extent × 1.1 ('kpt68'), or a detector box
whose centre moves down by 0.12 × its size ('bbox'). MTCNN boxes (facenet-pytorch, weights inside its wheel) use the
'bbox' convention, as DECA does for detector boxes. With no face and the whole-photo fallback allowed, DECA's own
fallback ("no face detected! run original image"): the photo's extent as a 'kpt68' box, i.e. a centred crop.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..identity.errors import NoFaceError
from ..identity.facenet import choose_face
from .crop import box_from_detector, box_from_landmarks
from .frames import SquareFrame


class NoHeadFoundError(ValueError):
    """No face in a head photo."""


_FAN = None


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


def to_square(points: np.ndarray, frame: SquareFrame) -> np.ndarray:
    """Photo pixels (…, 2) -> pixels of the letterboxed square the photo is resized to (frame.size)."""
    return (np.asarray(points, dtype=np.float64) + np.array(frame.pad)) * frame.size / frame.side


def whole_photo_region(frame: SquareFrame) -> tuple[float, np.ndarray]:
    """DECA's no-face fallback: the photo's extent (in the square) as a 'kpt68' box."""
    corners = to_square(np.array([[0.0, 0.0], [frame.width, frame.height]]), frame) - np.array([[0.0, 0.0],
                                                                                               [1.0, 1.0]])
    return box_from_landmarks(corners)


def face_region(photo: Image.Image, square: np.ndarray, frame: SquareFrame, face_index: int = 0,
                allow_whole_image: bool = False, use_fan: bool = True, name: str = "photo"
                ) -> tuple[tuple[float, np.ndarray], str, tuple[float, float, float, float] | None]:
    """((size, centre) in square pixels, method, face box in photo pixels or None) of face `face_index`
    (0 = largest) of `photo`, whose letterboxed uint8 square is `square` (`frame`)."""
    try:
        face = choose_face(photo, face_index, allow_whole_image, photo=name).face
    except NoFaceError as error:
        raise NoHeadFoundError(str(error)) from error
    if face is None:
        return whole_photo_region(frame), "whole", None
    box = to_square(np.array(face.box).reshape(2, 2), frame).reshape(4)
    fan = _fan() if use_fan else None
    if fan is not None:
        found = fan.get_landmarks(square, detected_faces=[box])
        if found:
            return box_from_landmarks(found[0][:, :2]), "fan", face.box
    return box_from_detector(tuple(float(v) for v in box)), "mtcnn", face.box
