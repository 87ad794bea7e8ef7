"""Identity encoder: one reference photo -> CLIP ViT-L/14 vision tokens of the face-parsed photo + FaceNet embedding,
exactly as CapHuman's `inference.py` computes them."""

from .clip_vision import build_clip_vision, clip_pixel_values, clip_tokens
from .encoder import Identity, IdentityEncoder, IdentityModelPaths
from .errors import IdentityError, ImageError, NoFaceError
from .face_parsing import FACE_ONLY_EXCLUDED_CLASSES, load_parsing_model, paint_face_only, parse_face
from .facenet import (
    FaceDetection,
    detect_faces,
    face_crop,
    face_embedding,
    load_face_detector,
    load_facenet,
    whole_image_crop,
)
from .image_io import load_image

__all__ = [
    "FACE_ONLY_EXCLUDED_CLASSES",
    "FaceDetection",
    "Identity",
    "IdentityEncoder",
    "IdentityError",
    "IdentityModelPaths",
    "ImageError",
    "NoFaceError",
    "build_clip_vision",
    "clip_pixel_values",
    "clip_tokens",
    "detect_faces",
    "face_crop",
    "face_embedding",
    "load_face_detector",
    "load_facenet",
    "load_image",
    "load_parsing_model",
    "paint_face_only",
    "parse_face",
    "whole_image_crop",
]
