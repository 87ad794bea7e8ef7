"""`score(image, units)`: identity similarity and head-control errors of a generated image, per unit.

    scorer = Scorer(folders=[Path("models/CapHuman")])          # or Scorer(builder=the webui's UnitBuilder)
    result = scorer.score(image, [unit])                        # units: UnitParams or API dicts
    result.faces[0].identity_similarity, result.faces[0].errors["pose"], result.overlay
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from caphuman_ext.unit.builder import UnitBuilder
from caphuman_ext.unit.models import model_folders
from caphuman_ext.unit.params import UnitParams, unit_from_dict
from preprocessors.identity import weights
from preprocessors.identity.facenet import load_face_detector, load_facenet
from preprocessors.identity.image_io import load_image
from preprocessors.photo_key import photo_key

from .faces import GeneratedFace, generated_faces, reference_embedding
from .matching import assign, cost_matrix, landmark_box
from .metrics import code_errors, cosine_similarity, euler_of, rotation_errors
from .overlay import landmarks_overlay
from .results import FaceScore, ImageScore
from .target import TargetHead, target_head


def as_units(units) -> list[UnitParams]:
    """One unit or a list of them, as UnitParams or API dicts (validated; a dict without 'enabled' counts as on)."""
    items = units if isinstance(units, Sequence) and not isinstance(units, (str, bytes, dict)) else [units]
    result = []
    for item in items:
        if isinstance(item, dict):
            item = unit_from_dict({"enabled": True, **item})
        if not isinstance(item, UnitParams):
            raise TypeError(f"expected a unit (UnitParams or dict), got {type(item).__name__}")
        result.append(item)
    return result


class Scorer:
    """Holds the scoring models: MTCNN + FaceNet (vggface2) and the head pipeline of a `UnitBuilder` (share the
    webui's builder to reuse its DECA models and its cached hints)."""

    def __init__(self, folders: list[Path] | None = None, device: torch.device | str | None = None,
                 builder: UnitBuilder | None = None, allow_download: bool = True, cache_size: int = 32) -> None:
        """device: where the models run; by default the shared builder's head device (moving a shared builder's
        models elsewhere would cost the next generation a transfer), else the CPU."""
        self.builder = builder or UnitBuilder(folders or model_folders(), allow_download=allow_download)
        if device is None:
            device = self.builder.head.device if self.builder.head is not None else "cpu"
        self.device = torch.device(device)
        self.cache_size = cache_size
        self.references: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._detector = self._facenet = None

    def identity_models(self):
        if self._facenet is None:
            path = weights.ensure(weights.FACENET_VGGFACE2, [Path(f) for f in self.builder.folders],
                                  self.builder.allow_download)
            self._facenet = load_facenet(path)
            self._detector = load_face_detector(self.device)
        self._facenet.to(self.device)
        self._detector.to(self.device)
        self._detector.device = self.device
        return self._detector, self._facenet

    def reference(self, unit: UnitParams) -> torch.Tensor:
        """The unit's reference FaceNet embedding, cached by photo content."""
        photos = [load_image(p) for p in unit.reference_images]
        key = photo_key(photos[0], [photo_key(p) for p in photos[1:]], unit.face_index, unit.allow_whole_image)
        if key not in self.references:
            self.references[key] = reference_embedding(*self.identity_models(), photos, unit.face_index,
                                                        unit.allow_whole_image)
            while len(self.references) > self.cache_size:
                self.references.popitem(last=False)
        self.references.move_to_end(key)
        return self.references[key]

    @contextlib.contextmanager
    def transient(self):
        """Results computed inside are not kept: on exit, the reference embeddings, DECA codes and hints cached
        meanwhile are dropped (those cached before stay). For API requests, whose photos are rarely seen again:
        the process returns to its size before the request instead of filling the caches with each request's
        2048² hints (measured: +0.2-0.4 GB per request with other photos each time, until the bounds)."""
        head = self.builder.head
        caches = [c for c in (head.cache, head.hints) if c is not None] if head is not None else []
        before = [set(cache.keys()) for cache in caches]
        references = set(self.references)
        try:
            yield self
        finally:
            head = self.builder.head
            if head is not None and not caches:  # built during this request: everything in it is new
                caches, before = [head.cache, head.hints], [set(), set()]
            for cache, kept in zip(caches, before):
                for key in [k for k in cache.keys() if k not in kept]:
                    cache.pop(key)
            for key in [k for k in self.references if k not in references]:
                del self.references[key]

    def score(self, image, units, overlay: bool = True) -> ImageScore:
        """Scores of `image` for every unit that has a reference photo (others are skipped, indices kept)."""
        image = load_image(image)
        scored = [(index, unit) for index, unit in enumerate(as_units(units)) if unit.reference_images]
        detector, facenet = self.identity_models()
        head = self.builder.head_pipeline(self.device)
        faces = generated_faces(image, detector, facenet, head)
        targets = [target_head(self.builder, unit, image.width, image.height, self.device) for _, unit in scored]
        references = [self.reference(unit) for _, unit in scored]
        similarities, chosen = match_faces(faces, targets, references)
        results = []
        for row, ((index, _), target, column) in enumerate(zip(scored, targets, chosen)):
            face = None if column is None else faces[column]
            similarity = None if face is None else float(similarities[row, column])
            results.append(face_score(index, face, similarity, target, len(faces)))
        picture = None
        if overlay:
            picture = landmarks_overlay(head, image, [t.hint for t in targets],
                                        [None if c is None else faces[c].landmarks for c in chosen],
                                        [None if c is None else faces[c].box for c in chosen])
        return ImageScore(results, image.width, image.height, picture)


def match_faces(faces: list[GeneratedFace], targets: list[TargetHead],
                references: list[torch.Tensor]) -> tuple[np.ndarray, list[int | None]]:
    """(units × faces FaceNet similarities, the face each unit gets or None): see `matching`."""
    similarities = np.array([[cosine_similarity(r, f.embedding) for f in faces] for r in references])
    similarities = similarities.reshape(len(references), len(faces))
    boxes = [landmark_box(t.landmarks) for t in targets]
    costs = cost_matrix(similarities, np.array([f.centre for f in faces]).reshape(-1, 2),
                        np.array([b[0] for b in boxes]).reshape(-1, 2), np.array([b[1] for b in boxes]))
    return similarities, assign(costs)


def face_score(unit: int, face: GeneratedFace | None, similarity: float | None, target: TargetHead,
               faces_in_image: int) -> FaceScore:
    """One unit's score from its matched face (or None) and its target head."""
    if face is None:
        return FaceScore(unit, False, target_head=euler_of(target.codes["pose"]), faces_in_image=faces_in_image)
    result = FaceScore(unit, True, similarity, face_box=face.box, target_head=euler_of(target.codes["pose"]),
                       faces_in_image=faces_in_image)
    if face.codes is None:
        return result
    generated = face.codes.codes
    result.head_fitted = True
    result.errors = code_errors(generated, target.codes)
    result.rotation = rotation_errors(generated["pose"], target.codes["pose"])
    result.generated_head = euler_of(generated["pose"])
    centre, size = landmark_box(target.landmarks)
    fitted_centre, _ = landmark_box(face.landmarks)
    size = max(size, 1.0)
    result.position_error = float(np.linalg.norm(fitted_centre - centre) / size)
    result.landmark_error = float(np.linalg.norm(face.landmarks - target.landmarks, axis=1).mean() / size)
    return result


_DEFAULT: Scorer | None = None


def score(generated_image, units, scorer: Scorer | None = None, overlay: bool = True) -> ImageScore:
    """Score `generated_image` (PIL, array, path or bytes) against `units` (one or a list; UnitParams or API
    dicts). Without `scorer`, one is made for the extension's model folders and kept."""
    global _DEFAULT
    if scorer is None:
        _DEFAULT = _DEFAULT or Scorer()
        scorer = _DEFAULT
    return scorer.score(generated_image, units, overlay)
