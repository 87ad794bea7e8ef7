"""Photos (or sliders) -> CapHuman's 9-channel head hint at any W×H, with previews and per-photo code caching.

    pipeline = HeadPipeline(HeadAssets.find([models_dir]))
    result = pipeline.render(identity_photo, pose_photo, modes="position,pose", width=768, height=512,
                             resize_mode="Crop and Resize")
    result.hint  # (1, 9, 512, 768): cat([normal, albedo, shading]) at the generation size
    pipeline.render(..., width=1536, height=1024)  # hires fix: re-rendered, nothing re-encoded

Photos are read with the identity stage's `load_image` (EXIF orientation applied, RGB) and the identity photo's face
is the unit's `face_index` face, the one FaceNet and face parsing use (`choose_face`); a pose photo's face is its
largest. `allow_whole_image` fits a photo without a face as DECA does: a centred crop of the whole photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from safe_files.rng_guard import rng_untouched

from ..cache import MB, ByteLRU
from ..graphed_module import place
from ..identity.image_io import load_image
from ..photo_key import photo_key
from .assets import HeadAssets
from .codes import DEFAULT_MODES, apply_manual, mix_codes
from .crop import box_from_landmarks, crop_face
from .decode import decode
from .detect import face_region, to_square
from .encoder import DecaEncoder, split_codes
from .flame import Flame
from .frames import SquareFrame, letterbox, place_photo, square_to_canvas
from .mesh import load_obj
from .projection import inverse_tform, orthographic
from .renderer import HeadMaps, HeadRenderer
from .texture import FlameTexture

DECA_SIZE = 512  # the reference resizes photos to 512×512 (image_resolution) before cropping


@dataclass
class ManualHead:
    """Head control without a pose photo: rotation in degrees, placement as canvas fractions."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    center_x: float = 0.5
    center_y: float = 0.45
    scale: float = 0.45  # head height / canvas height
    expression: float = 1.0
    jaw_open: float = 0.0
    light_direction: tuple[float, float, float] | None = None
    light_strength: float = 1.0


@dataclass
class PhotoCodes:
    codes: dict[str, torch.Tensor]  # DECA codes + tform (inverse-transposed crop transform)
    frame: SquareFrame
    method: str  # how the face was found: landmarks | fan | mtcnn | whole (no face: the whole photo)
    face_box: tuple[float, float, float, float] | None = None  # the detected face used, in photo pixels


@dataclass
class HeadHint:
    maps: HeadMaps
    landmarks: np.ndarray  # (68, 2) canvas pixels
    width: int
    height: int
    info: dict = field(default_factory=dict)

    @property
    def hint(self) -> torch.Tensor:
        return self.maps.hint()


def upright(photo, landmarks=None) -> tuple[Image.Image, np.ndarray | None]:
    """The photo as every stage reads it (`load_image`: EXIF orientation applied, RGB, large photos downscaled) and
    its landmarks scaled along (given in pixels of the upright photo before any downscale)."""
    image = load_image(photo)
    if landmarks is not None:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if isinstance(photo, Image.Image) and max(photo.size) != max(image.size):
            landmarks = landmarks * max(image.size) / max(photo.size)
    return image, landmarks


def _photo_key(image: Image.Image, landmarks, face_index: int, allow_whole_image: bool) -> str:
    return photo_key(image, None if landmarks is None else np.asarray(landmarks, dtype=np.float64).tobytes(),
                     face_index, allow_whole_image)


class HeadPipeline:
    """Loads only what the hint needs (E_flame, FLAME, texture space, head template), lazily.

    Caches, by photo content: DECA codes of `cache_size` photos (at most `cache_bytes`), and rendered hints
    (`cache_size` of them, at most `hint_cache_bytes`: a 4096² hint alone is ~670 MB, and is then not kept).
    """

    def __init__(self, assets: HeadAssets, device: torch.device | str = "cpu", cache_size: int = 32,
                 deca_size: int = DECA_SIZE, cache_bytes: int = 64 * MB, hint_cache_bytes: int = 512 * MB) -> None:
        self.assets = assets
        self.device = torch.device(device)
        self.deca_size = deca_size
        self.cache: ByteLRU[PhotoCodes] = ByteLRU(cache_bytes, cache_size)
        self.hints: ByteLRU[HeadHint] = ByteLRU(hint_cache_bytes, cache_size)
        self._models: tuple | None = None

    def models(self) -> tuple[DecaEncoder, Flame, FlameTexture, HeadRenderer]:
        if self._models is None:
            with rng_untouched():
                self._models = (DecaEncoder.from_file(self.assets.deca_model),
                                Flame.from_files(self.assets.flame_model, self.assets.landmark_embedding),
                                FlameTexture.from_file(self.assets.flame_texture),
                                HeadRenderer(load_obj(self.assets.head_template)))
        for model in self._models:
            place(model, self.device)
        return self._models

    def offload(self) -> None:
        if self._models is not None:
            for model in self._models:
                model.to("cpu")

    def photo_codes(self, photo, landmarks: np.ndarray | None = None, face_index: int = 0,
                    allow_whole_image: bool = False, name: str = "reference photo") -> PhotoCodes:
        """DECA codes of a photo's face `face_index` (0 = largest; the photo letterboxed to a square, resized to
        512); cached by content.

        landmarks: optional (68, 2) points in the upright photo's pixels (skips detection).
        allow_whole_image: a photo without a face is fitted as a centred crop of the whole photo (else an error).
        """
        image, landmarks = upright(photo, landmarks)
        key = _photo_key(image, landmarks, face_index, allow_whole_image)
        return self._codes(image, landmarks, face_index, allow_whole_image, name, key)

    def _codes(self, image: Image.Image, landmarks: np.ndarray | None, face_index: int, allow_whole_image: bool,
               name: str, key: str) -> PhotoCodes:
        """`photo_codes` of an upright photo whose cache key is already known."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        square, frame = letterbox(image, self.deca_size)
        face_box = None
        if landmarks is not None:
            region, method = box_from_landmarks(to_square(landmarks, frame)), "landmarks"
        else:
            region, method, face_box = face_region(image, square, frame, face_index, allow_whole_image, name=name)
        crop = crop_face(square, region)
        encoder = self.models()[0]
        with torch.no_grad():
            codes = split_codes(encoder(crop.image[None].to(self.device)))  # `DecaEncoder.encode`, graph or not
        codes = {k: v.detach() for k, v in codes.items()}
        codes["tform"] = inverse_tform(crop.tform).to(self.device)
        return self.cache.put(key, PhotoCodes(codes, frame, method, face_box))

    def render(self, identity_photo, pose_photo=None, modes=DEFAULT_MODES, width: int = 512, height: int = 512,
               resize_mode: str = "Crop and Resize", manual: ManualHead | None = None, identity_landmarks=None,
               pose_landmarks=None, face_index: int = 0, allow_whole_image: bool = False) -> HeadHint:
        """The hint for one identity: posed like `pose_photo` (per `modes`) placed on the W×H canvas by
        `resize_mode`, or by `manual` when there is no pose photo. Repeated calls come from a cache.

        face_index: which face of the identity photo (0 = largest), as for the identity stage; the pose photo's
        largest face poses it. allow_whole_image: a photo without a face is fitted whole (DECA's fallback).
        """
        identity_image, identity_landmarks = upright(identity_photo, identity_landmarks)
        identity_key = _photo_key(identity_image, identity_landmarks, face_index, allow_whole_image)
        pose_image = pose_key = None
        if pose_photo is not None:
            pose_image, pose_landmarks = upright(pose_photo, pose_landmarks)
            pose_key = _photo_key(pose_image, pose_landmarks, 0, allow_whole_image)
        key = (identity_key, pose_key, str(modes), width, height, resize_mode, repr(manual))
        cached = self.hints.get(key)
        if cached is not None:
            return cached
        identity = self._codes(identity_image, identity_landmarks, face_index, allow_whole_image, "reference photo",
                               identity_key)
        pose = None if pose_image is None else self._codes(pose_image, pose_landmarks, 0, allow_whole_image,
                                                           "pose photo", pose_key)
        return self.hints.put(key, self._render(identity, pose, modes, width, height, resize_mode, manual))

    def _render(self, identity: PhotoCodes, pose: PhotoCodes | None, modes, width, height, resize_mode,
                manual) -> HeadHint:
        _, flame, texture, renderer = self.models()
        with torch.no_grad():
            if pose is not None:
                code = mix_codes(identity.codes, pose.codes, modes)
                frame = pose.frame if "position" in modes or modes == "all" else identity.frame
                if manual is not None:
                    code = apply_manual(code, manual.yaw, manual.pitch, manual.roll, manual.expression,
                                        manual.jaw_open, manual.light_direction, manual.light_strength)
                decoded = decode(code, flame, texture, renderer, self.deca_size, self.deca_size)
                projected = square_to_canvas(decoded.projected, frame, width, height, resize_mode)
                landmarks = square_to_canvas(decoded.landmarks2d, frame, width, height, resize_mode)
            else:
                manual = manual or ManualHead()
                code = apply_manual(identity.codes, manual.yaw, manual.pitch, manual.roll, manual.expression,
                                    manual.jaw_open, manual.light_direction, manual.light_strength)
                decoded = decode(code, flame, texture, renderer, self.deca_size, self.deca_size)
                projected, landmarks = self._place(code, decoded, manual, width, height)
            maps = renderer(decoded.vertices, projected, texture(code["tex"]), code["light"], height, width)
        pixels = ((landmarks[0, :, :2].cpu().numpy() + 1) / 2) * np.array([width, height])
        info = {"identity_face": identity.method, "identity_face_box": identity.face_box, "modes": str(modes)}
        return HeadHint(maps, pixels, width, height, info)

    def _place(self, code, decoded, manual: ManualHead, width: int, height: int):
        """Manual placement: the head's landmark box centred at (center_x, center_y), `scale` of the height."""
        flame = self.models()[1]
        vertices, landmarks2d, _ = flame(code["shape"], code["exp"], code["pose"])
        points = orthographic(vertices, code["cam"])
        marks = orthographic(landmarks2d, code["cam"])
        low, high = marks[0, :, :2].min(0).values, marks[0, :, :2].max(0).values
        centre = (low + high) / 2
        extent = (high - low)[1].clamp_min(1e-6) * 1.6  # landmarks span brows to chin; the head is taller
        k = manual.scale * 2 / extent

        def place(p):
            x = (p[..., 0] - centre[0]) * k * height / width + (manual.center_x * 2 - 1)
            y = (p[..., 1] - centre[1]) * k + (manual.center_y * 2 - 1)
            return torch.stack([x, y, p[..., 2] * k], -1)

        return place(points), place(marks)

    def preview(self, result: HeadHint, pose_photo: Image.Image | None = None,
                resize_mode: str = "Crop and Resize") -> dict[str, Image.Image]:
        """normal / albedo / shading / alpha maps and the 68 landmarks over the placed pose photo."""
        def to_image(tensor: torch.Tensor) -> Image.Image:
            array = (tensor[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)

        maps = result.maps
        if pose_photo is not None:
            base = place_photo(load_image(pose_photo), result.width, result.height, resize_mode)
        else:
            base = Image.new("RGB", (result.width, result.height))
        draw = ImageDraw.Draw(base)
        radius = max(1, round(min(result.width, result.height) / 200))
        for x, y in result.landmarks:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(0, 255, 0))
        return {"normal": to_image(maps.normal * 0.5 + 0.5 * maps.alpha), "albedo": to_image(maps.albedo),
                "shading": to_image(maps.shading), "alpha": to_image(maps.alpha), "landmarks": base}
