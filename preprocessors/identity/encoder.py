"""One call from reference photo(s) to CapHuman's identity features, with lazy models and a content-keyed cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cache import MB, ByteLRU
from ..graphed_module import place
from ..photo_key import photo_key
from . import weights
from .clip_files import ClipSearch, locate_clip_vision, read_clip_vision
from .clip_vision import build_clip_vision, clip_pixel_values, clip_tokens
from .face_parsing import face_window, keep_one_face, load_parsing_model, paint_face_only, parse_face
from .facenet import (
    FaceDetection,
    choose_face,
    face_crop,
    face_embedding,
    load_face_detector,
    load_facenet,
    whole_image_crop,
)
from .image_io import load_image

EXTENSION_MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass
class IdentityModelPaths:
    """Where the identity models come from.

    clip_vision: a state dict keyed `vision_model.*`, or the CapHuman file (caphuman.ckpt or the converter's output);
    when that file holds no CLIP tower, it is looked for as `clip_files` documents: `folders`, sd-webui-controlnet's
    `annotator_dirs` (see `clip_files.controlnet_annotator_dirs`), the Hugging Face cache, then a download.
    face_parsing / facenet: explicit files, else searched in `folders` and downloaded into the first one on first
    use when `allow_download`.
    """

    clip_vision: Mapping[str, torch.Tensor] | str | Path | None = None
    face_parsing: str | Path | None = None
    facenet: str | Path | None = None
    folders: list[Path] = field(default_factory=lambda: [EXTENSION_MODELS])
    allow_download: bool = True
    annotator_dirs: list[Path] = field(default_factory=list)
    hub_caches: list[Path] | None = None  # None: the Hugging Face caches the environment names


@dataclass
class Identity:
    """What CapFace's `identity_context` needs, plus what a preview shows."""

    clip_tokens: torch.Tensor  # (1, 257, 1024) CLIP ViT-L/14 last_hidden_state of the face-only image
    face_embedding: torch.Tensor  # (1, 1, 512) L2-normalised FaceNet embedding
    face_only: Image.Image  # CLIP's input: the photo with all but the face painted white (see `_encode_one`)
    parsing: np.ndarray  # (H, W) BiSeNet labels of the photo (other people's faces set to 0)
    face_box: tuple[float, float, float, float] | None  # the face used, None for the whole-image fallback
    faces: list[FaceDetection]  # every face found in that photo, largest first
    photos: int = 1  # how many photos were combined


def sharpness(image: Image.Image, box: tuple[float, float, float, float] | None) -> float:
    """Variance of the Laplacian over the face box: the CLIP tokens of several photos come from the sharpest."""
    import cv2

    face = image.convert("L")
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        face = face.crop((max(0, x0), max(0, y0), max(x0 + 1, x1), max(y0 + 1, y1)))
    gray = np.asarray(face.resize((224, 224), Image.BICUBIC), dtype=np.float32)  # same scale for every photo
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


class IdentityEncoder:
    """Photos -> `Identity`. Models load on first use; `offload=True` moves them to the CPU after each call.

    Results are cached by photo content, at most `cache_size` photos and `cache_bytes` bytes of tensors and images.
    """

    def __init__(self, paths: IdentityModelPaths | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, offload: bool = False, cache_size: int = 16,
                 cache_bytes: int = 256 * MB) -> None:
        self.paths = paths or IdentityModelPaths()
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload_after_use = offload
        self.cache: ByteLRU[Identity] = ByteLRU(cache_bytes, cache_size)
        self._parser = self._detector = self._facenet = self._clip = None

    # models ------------------------------------------------------------------------------------------------
    def _file(self, explicit, model: weights.ModelFile) -> Path:
        if explicit is not None:
            path = Path(explicit)
            if not path.is_file():
                raise weights.ModelFileMissingError(f"{path} not found ({model.about}; download: {model.url})")
            return path
        return weights.ensure(model, [Path(f) for f in self.paths.folders], self.paths.allow_download)

    def _clip_state(self) -> Mapping[str, torch.Tensor]:
        source = self.paths.clip_vision
        if isinstance(source, Mapping):
            return source
        search = ClipSearch(Path(source) if source is not None else None, [Path(f) for f in self.paths.folders],
                            [Path(f) for f in self.paths.annotator_dirs], self.paths.hub_caches,
                            self.paths.allow_download)
        return read_clip_vision(locate_clip_vision(search))

    def _models(self):
        if self._parser is None:
            self._parser = load_parsing_model(self._file(self.paths.face_parsing, weights.FACE_PARSING))
        if self._facenet is None:
            self._facenet = load_facenet(self._file(self.paths.facenet, weights.FACENET_VGGFACE2))
        if self._detector is None:
            self._detector = load_face_detector(self.device)
        place(self._detector, self.device)
        self._detector.device = self.device
        if self._clip is None:
            self._clip = build_clip_vision(self._clip_state())
        # eager, also on CUDA: replayed as CUDA graphs (preprocessors.graphed_module) each network is 2-8x faster
        # alone, but a cold photo end to end was not (≈ 100 ms either way on an H200) and the captures cost 2.1-2.7 s
        # at the first photo after every load or offload (docs/PERFORMANCE.md, "The first image")
        for model in (self._parser, self._facenet):
            place(model, self.device)
        place(self._clip, self.device, self.dtype)
        return self._parser, self._detector, self._facenet, self._clip

    def offload(self) -> None:
        """Move the models to the CPU (their weights stay loaded)."""
        for model in (self._parser, self._facenet, self._clip, self._detector):
            if model is not None:
                model.to("cpu")
        if self._detector is not None:
            self._detector.device = torch.device("cpu")

    def unload(self) -> None:
        """Forget the models (and the cache)."""
        self._parser = self._detector = self._facenet = self._clip = None
        self.cache.clear()

    def _fingerprint(self) -> tuple:
        """What the cached results depend on besides the photo: the model sources and the precision."""
        paths = self.paths
        clip = id(paths.clip_vision) if isinstance(paths.clip_vision, Mapping) else str(paths.clip_vision)
        return (clip, str(paths.face_parsing), str(paths.facenet), tuple(map(str, paths.folders)), str(self.dtype))

    # encoding ----------------------------------------------------------------------------------------------
    def _encode_one(self, image: Image.Image, face_index: int, allow_whole_image: bool) -> Identity:
        """One photo. With one face (or none) exactly the reference: the whole photo parsed and painted, CLIP's
        centre crop of it, FaceNet on the face (or the whole photo). With several faces, the face chosen by
        `face_index` (the one the head stage fits too) everywhere: parsing labels kept only in its region
        (`keep_one_face`), and CLIP sees the min(W, H) square centred on it (`face_window`)."""
        parser, detector, facenet, clip = self._models()
        choice = choose_face(image, face_index, allow_whole_image, detector)
        labels = parse_face(parser, image)
        if len(choice.faces) > 1:
            labels = keep_one_face(labels, [f.box for f in choice.faces], choice.face.box)
            face_only = paint_face_only(image, labels).crop(face_window(image.size, choice.face.box))
        else:
            face_only = paint_face_only(image, labels)
        tokens = clip_tokens(clip, clip_pixel_values(face_only)).float().cpu()
        if choice.face is not None:
            crop, box = face_crop(image, choice.face), choice.face.box
        else:
            crop, box = whole_image_crop(image), None
        embedding = face_embedding(facenet, crop).float().cpu()
        return Identity(tokens, embedding, face_only, labels, box, list(choice.faces))

    def encode(self, photos, face_index: int = 0, allow_whole_image: bool = False) -> Identity:
        """Identity of one photo, or of several photos of the same person (FaceNet embeddings averaged and
        re-normalised; CLIP tokens, face-only image and parsing of the sharpest photo's face).

        face_index: which face, largest first. allow_whole_image: when no face is found, use the whole photo as
        the reference implementation silently does (otherwise NoFaceError).
        """
        items = photos if isinstance(photos, Sequence) and not isinstance(photos, (str, bytes)) else [photos]
        images = [load_image(item) for item in items]
        results = []
        try:
            for image in images:
                key = photo_key(image, face_index, allow_whole_image, self._fingerprint())
                identity = self.cache.get(key)
                if identity is None:
                    identity = self.cache.put(key, self._encode_one(image, face_index, allow_whole_image))
                results.append(identity)
        finally:
            if self.offload_after_use:
                self.offload()
        if len(results) == 1:
            return results[0]
        scores = [sharpness(img, r.face_box) for img, r in zip(images, results)]
        best = results[int(np.argmax(scores))]
        mean = torch.stack([r.face_embedding for r in results]).mean(0)
        mean = torch.nn.functional.normalize(mean, dim=-1)
        return Identity(best.clip_tokens, mean, best.face_only, best.parsing, best.face_box, best.faces,
                        photos=len(results))
