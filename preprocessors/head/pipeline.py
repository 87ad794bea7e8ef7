"""Photos (or sliders) -> CapHuman's 9-channel head hint at any W×H, with previews and per-photo code caching.

    pipeline = HeadPipeline(HeadAssets.find([models_dir]))
    result = pipeline.render(identity_photo, pose_photo, modes="position,pose", width=768, height=512,
                             resize_mode="Crop and Resize")
    result.hint  # (1, 9, 512, 768): cat([normal, albedo, shading]) at the generation size
    pipeline.render(..., width=1536, height=1024)  # hires fix: re-rendered, nothing re-encoded
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..photo_key import photo_key
from .assets import HeadAssets
from .codes import DEFAULT_MODES, apply_manual, mix_codes
from .crop import box_from_landmarks, crop_face
from .decode import decode
from .detect import face_region
from .encoder import DecaEncoder
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
    method: str  # how the face was found: landmarks | fan | mtcnn


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


def _photo_key(image: Image.Image, landmarks) -> str:
    return photo_key(image, None if landmarks is None else np.asarray(landmarks, dtype=np.float64).tobytes())


class HeadPipeline:
    """Loads only what the hint needs (E_flame, FLAME, texture space, head template), lazily."""

    def __init__(self, assets: HeadAssets, device: torch.device | str = "cpu", cache_size: int = 32,
                 deca_size: int = DECA_SIZE) -> None:
        self.assets = assets
        self.device = torch.device(device)
        self.deca_size = deca_size
        self.cache: OrderedDict[str, PhotoCodes] = OrderedDict()
        self.hints: OrderedDict[tuple, HeadHint] = OrderedDict()
        self.cache_size = cache_size
        self._models: tuple | None = None

    def models(self) -> tuple[DecaEncoder, Flame, FlameTexture, HeadRenderer]:
        if self._models is None:
            self._models = (DecaEncoder.from_file(self.assets.deca_model),
                            Flame.from_files(self.assets.flame_model, self.assets.landmark_embedding),
                            FlameTexture.from_file(self.assets.flame_texture),
                            HeadRenderer(load_obj(self.assets.head_template)))
        for model in self._models:
            model.to(self.device)
        return self._models

    def offload(self) -> None:
        if self._models is not None:
            for model in self._models:
                model.to("cpu")

    def photo_codes(self, photo: Image.Image, landmarks: np.ndarray | None = None) -> PhotoCodes:
        """DECA codes of a photo (letterboxed to a square, resized to 512); cached by content.

        landmarks: optional (68, 2) points in the photo's pixels (skips detection).
        """
        key = _photo_key(photo, landmarks)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        square, frame = letterbox(photo, self.deca_size)
        if landmarks is not None:
            points = (np.asarray(landmarks, dtype=np.float64) + np.array(frame.pad)) * self.deca_size / frame.side
            region, method = box_from_landmarks(points), "landmarks"
        else:
            region, method = face_region(square)
        crop = crop_face(square, region)
        encoder = self.models()[0]
        with torch.no_grad():
            codes = encoder.encode(crop.image[None].to(self.device))
        codes = {k: v.detach() for k, v in codes.items()}
        codes["tform"] = inverse_tform(crop.tform).to(self.device)
        result = PhotoCodes(codes, frame, method)
        self.cache[key] = result
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return result

    def render(self, identity_photo: Image.Image, pose_photo: Image.Image | None = None,
               modes=DEFAULT_MODES, width: int = 512, height: int = 512, resize_mode: str = "Crop and Resize",
               manual: ManualHead | None = None, identity_landmarks=None, pose_landmarks=None) -> HeadHint:
        """The hint for one identity: posed like `pose_photo` (per `modes`) placed on the W×H canvas by
        `resize_mode`, or by `manual` when there is no pose photo. Repeated calls come from a cache."""
        key = (_photo_key(identity_photo, identity_landmarks),
               None if pose_photo is None else _photo_key(pose_photo, pose_landmarks), str(modes), width, height,
               resize_mode, repr(manual))
        if key in self.hints:
            self.hints.move_to_end(key)
            return self.hints[key]
        result = self._render(identity_photo, pose_photo, modes, width, height, resize_mode, manual,
                              identity_landmarks, pose_landmarks)
        self.hints[key] = result
        while len(self.hints) > self.cache_size:
            self.hints.popitem(last=False)
        return result

    def _render(self, identity_photo, pose_photo, modes, width, height, resize_mode, manual, identity_landmarks,
                pose_landmarks) -> HeadHint:
        _, flame, texture, renderer = self.models()
        identity = self.photo_codes(identity_photo, identity_landmarks)
        with torch.no_grad():
            if pose_photo is not None:
                pose = self.photo_codes(pose_photo, pose_landmarks)
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
        return HeadHint(maps, pixels, width, height, {"identity_face": identity.method, "modes": str(modes)})

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
        base = place_photo(pose_photo, result.width, result.height, resize_mode) if pose_photo is not None \
            else Image.new("RGB", (result.width, result.height))
        draw = ImageDraw.Draw(base)
        radius = max(1, round(min(result.width, result.height) / 200))
        for x, y in result.landmarks:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(0, 255, 0))
        return {"normal": to_image(maps.normal * 0.5 + 0.5 * maps.alpha), "albedo": to_image(maps.albedo),
                "shading": to_image(maps.shading), "alpha": to_image(maps.alpha), "landmarks": base}
