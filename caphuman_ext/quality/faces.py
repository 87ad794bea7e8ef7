"""Faces of a generated image and of the reference photos, measured with the extension's own models.

Every step is the preprocessors' code: MTCNN + FaceNet (`preprocessors.identity.facenet`: the reference's
`get_id_feat`), DECA's crop and `E_flame` (`HeadPipeline.photo_codes`), FLAME landmarks projected as the hint does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from preprocessors.head.crop import CROP_SIZE
from preprocessors.head.detect import NoHeadFoundError
from preprocessors.head.frames import square_to_canvas
from preprocessors.head.pipeline import HeadPipeline, PhotoCodes
from preprocessors.head.projection import crop_to_image, orthographic
from preprocessors.identity.facenet import (
    FaceDetection,
    detect_faces,
    face_crop,
    face_embedding,
    pick_face,
    whole_image_crop,
)
from preprocessors.identity.image_io import load_image

CONTEXT = 1.8  # a face's own photo, when the image has several: this many face-box sides around it


@dataclass
class GeneratedFace:
    box: tuple[float, float, float, float]  # MTCNN box, image pixels
    probability: float
    embedding: torch.Tensor  # (1, 1, 512) FaceNet
    codes: PhotoCodes | None  # DECA codes of this face (+ their frame); None if DECA's face finder missed it
    landmarks: np.ndarray | None  # (68, 2) the fitted FLAME head's landmarks, image pixels

    @property
    def centre(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def reference_embedding(detector, facenet: torch.nn.Module, photos: list, face_index: int = 0,
                        allow_whole_image: bool = False) -> torch.Tensor:
    """(1, 1, 512) FaceNet embedding of a unit's reference photo(s), as `IdentityEncoder.encode` computes it
    (same face choice and whole-image fallback; several photos: normalised mean)."""
    embeddings = []
    for photo in photos:
        image = load_image(photo)
        faces = detect_faces(detector, image)
        if faces or not allow_whole_image:
            crop = face_crop(image, pick_face(faces, face_index))
        else:
            crop = whole_image_crop(image)
        embeddings.append(face_embedding(facenet, crop).float().cpu())
    if len(embeddings) == 1:
        return embeddings[0]
    return torch.nn.functional.normalize(torch.stack(embeddings).mean(0), dim=-1)


def face_photo(image: Image.Image, face: FaceDetection, alone: bool) -> tuple[Image.Image, np.ndarray]:
    """The photo DECA sees for `face`: the whole image when it is the only face, else a square around it
    (`CONTEXT` box sides, clipped to the image) so that DECA's own face finder picks this face. Returns the photo
    and its top-left corner in the image."""
    if alone:
        return image, np.zeros(2)
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * CONTEXT
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    right, bottom = min(image.width, int(round(cx + side / 2))), min(image.height, int(round(cy + side / 2)))
    return image.crop((left, top, right, bottom)), np.array([left, top], dtype=np.float64)


def head_landmarks(head: HeadPipeline, photo_codes: PhotoCodes) -> np.ndarray:
    """(68, 2) landmarks of the FLAME head fitted to a photo, in that photo's pixels (the hint's projection)."""
    flame = head.models()[1]
    codes = photo_codes.codes
    with torch.no_grad():
        _, landmarks2d, _ = flame(codes["shape"], codes["exp"], codes["pose"])
        tform = codes["tform"] if codes["tform"].dim() == 3 else codes["tform"][None]
        square = crop_to_image(orthographic(landmarks2d, codes["cam"])[:, :, :2], tform, CROP_SIZE,
                               head.deca_size, head.deca_size)
        frame = photo_codes.frame
        normalised = square_to_canvas(square, frame, frame.width, frame.height, "Just Resize")
    return ((normalised[0, :, :2].cpu().numpy() + 1) / 2) * np.array([frame.width, frame.height])


def generated_faces(image: Image.Image, detector, facenet: torch.nn.Module, head: HeadPipeline,
                    max_faces: int = 8) -> list[GeneratedFace]:
    """Every face MTCNN finds in `image` (largest first, at most `max_faces`), each with its FaceNet embedding,
    DECA codes and fitted landmarks (None where DECA's own face finder does not see the face)."""
    faces = detect_faces(detector, image)[:max_faces]
    found = []
    for face in faces:
        embedding = face_embedding(facenet, face_crop(image, face)).float().cpu()
        photo, offset = face_photo(image, face, alone=len(faces) == 1)
        try:
            codes = head.photo_codes(photo)
        except NoHeadFoundError:
            found.append(GeneratedFace(face.box, face.probability, embedding, None, None))
            continue
        found.append(GeneratedFace(face.box, face.probability, embedding, codes,
                                   head_landmarks(head, codes) + offset))
    return found
