"""FaceNet identity embedding: facenet-pytorch MTCNN crop (160 px, margin 0, standardised) + InceptionResnetV1
(vggface2), as CapHuman's `get_id_feat`; and the one face choice every stage shares (`choose_face`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safe_files.rng_guard import rng_untouched

from ..cache import ByteLRU
from ..photo_key import photo_key
from .errors import NoFaceError

CROP_SIZE = 160


@dataclass(frozen=True)
class FaceDetection:
    """One detected face: box (x0, y0, x1, y1) in photo pixels and MTCNN's probability."""

    box: tuple[float, float, float, float]
    probability: float

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@rng_untouched()
def load_face_detector(device: torch.device | str = "cpu"):
    """facenet-pytorch MTCNN with the reference's settings; its weights ship inside the facenet-pytorch wheel."""
    from facenet_pytorch import MTCNN

    return MTCNN(image_size=CROP_SIZE, margin=0, post_process=True, select_largest=True, keep_all=False,
                 device=device)


@rng_untouched()
def load_facenet(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """InceptionResnetV1 (classify=False) with the vggface2 weights `20180402-114759-vggface2.pt`."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    from safe_files.weights import load_pickled_weights

    state = load_pickled_weights(path)  # no pickled code runs; sizes bounded by the file
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")}, strict=True)
    return model.to(device).eval().requires_grad_(False)


def detect_faces(detector, image: Image.Image) -> list[FaceDetection]:
    """Every face MTCNN finds, largest first (the reference keeps the largest)."""
    if min(image.size) < getattr(detector, "min_face_size", 20):
        return []  # MTCNN's image pyramid is empty for photos smaller than its smallest face
    boxes, probs = detector.detect(image)
    if boxes is None:
        return []
    faces = [FaceDetection(tuple(float(v) for v in box), float(p)) for box, p in zip(boxes, probs)]
    return sorted(faces, key=lambda f: f.area, reverse=True)


def face_crop(image: Image.Image, face: FaceDetection) -> torch.Tensor:
    """(3, 160, 160) standardised ((x - 127.5) / 128) crop of `face`, as `MTCNN.__call__` returns it."""
    from facenet_pytorch.models.mtcnn import fixed_image_standardization
    from facenet_pytorch.models.utils.detect_face import extract_face

    return fixed_image_standardization(extract_face(image, np.array(face.box), CROP_SIZE, 0))


def whole_image_crop(image: Image.Image) -> torch.Tensor:
    """The reference's silent fallback when no face is found: the whole photo resized to 160², in [0, 1]."""
    resized = image.resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def pick_face(faces: list[FaceDetection], index: int = 0, photo: str = "reference photo") -> FaceDetection:
    """Face `index` in order of size (0 = largest), or NoFaceError naming `photo`."""
    if not faces:
        raise NoFaceError(f"no face was found in the {photo}: use a photo where the face is clearly "
                          "visible (frontal, not too small), or allow the whole-image fallback")
    if not 0 <= index < len(faces):
        raise NoFaceError(f"face {index + 1} was asked for but the {photo} has {len(faces)} face(s)")
    return faces[index]


@dataclass(frozen=True)
class FaceChoice:
    """The face of a photo that every stage (FaceNet, face parsing, DECA) uses.

    face: the chosen face, None when the photo has none and the whole photo stands in for it.
    faces: every face of the photo, largest first.
    """

    face: FaceDetection | None
    faces: tuple[FaceDetection, ...]


_FACES: ByteLRU[tuple[FaceDetection, ...]] = ByteLRU(max_bytes=1 << 20, max_entries=256)
_DETECTOR = None


def find_faces(image: Image.Image, detector=None) -> tuple[FaceDetection, ...]:
    """Every face of an RGB photo, largest first, detected once per photo content and shared by the stages.

    detector: an MTCNN from `load_face_detector` (any device: the same weights ship in the wheel), else one on the
    CPU. Results are cached by the photo's pixels only, so pass photos as `load_image` returns them.
    """
    global _DETECTOR
    key = photo_key(image)
    faces = _FACES.get(key)
    if faces is None:
        if detector is None:
            _DETECTOR = _DETECTOR or load_face_detector("cpu")
            detector = _DETECTOR
        faces = _FACES.put(key, tuple(detect_faces(detector, image)))
    return faces


def choose_face(image: Image.Image, index: int = 0, allow_whole_image: bool = False, detector=None,
                photo: str = "reference photo") -> FaceChoice:
    """Face `index` of the photo in order of size (0 = largest), as `FaceChoice`.

    No face at all: `FaceChoice(None, ())` when `allow_whole_image`, else NoFaceError; an index beyond the faces
    found is always a NoFaceError.
    """
    faces = find_faces(image, detector)
    if not faces and allow_whole_image:
        return FaceChoice(None, faces)
    return FaceChoice(pick_face(list(faces), index, photo), faces)


def face_embedding(model: torch.nn.Module, crop: torch.Tensor) -> torch.Tensor:
    """L2-normalised 512-d embedding shaped (1, 1, 512), as CapHuman feeds `id_linear`."""
    parameter = next(model.parameters())
    with torch.no_grad():
        embedding = model(crop[None].to(parameter.device, parameter.dtype))
    return embedding[:, None, :]
