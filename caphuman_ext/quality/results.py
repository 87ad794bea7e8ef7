"""What a score is: one entry per unit (the person it asked for), plain values that go to JSON, CSV and infotext."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from PIL import Image

from .metrics import PAPER_CODES

SHORT_NAMES = {"shape": "shape", "pose": "pose", "expression": "exp", "lighting": "light"}


@dataclass
class FaceScore:
    """How well one unit's person and head came out. Errors are None when no face was found (or fitted)."""

    unit: int  # index of the unit in the list scored (0-based)
    face_found: bool
    identity_similarity: float | None = None  # FaceNet cosine to the reference photo(s); paper: 0.8429
    head_fitted: bool = False  # DECA fitted the face (needed for every error below)
    errors: dict[str, float] = field(default_factory=dict)  # RMSE: shape, pose, expression, lighting, pose_global, jaw
    rotation: dict[str, float] = field(default_factory=dict)  # yaw_deg, pitch_deg, roll_deg, rotation_deg errors
    generated_head: dict[str, float] = field(default_factory=dict)  # yaw, pitch, roll (degrees) of the face
    target_head: dict[str, float] = field(default_factory=dict)  # yaw, pitch, roll (degrees) asked for
    position_error: float | None = None  # landmark-box centres apart, in target head sizes
    landmark_error: float | None = None  # mean distance of the 68 landmarks, in target head sizes
    face_box: tuple[float, float, float, float] | None = None  # the matched face in the image (pixels)
    faces_in_image: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["face_box"] = None if self.face_box is None else [round(v, 2) for v in self.face_box]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FaceScore:
        """Back from `to_dict()` (e.g. a /caphuman/v1/score answer); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("face_box") is not None:
            values["face_box"] = tuple(values["face_box"])
        return cls(**values)

    def flat(self) -> dict[str, float | int | bool | None]:
        """One row: identity_similarity, shape, pose, expression, lighting, ..., yaw_deg, ... (CSV columns)."""
        row: dict = {"face_found": self.face_found, "head_fitted": self.head_fitted,
                     "identity_similarity": self.identity_similarity}
        for name in (*PAPER_CODES, "pose_global", "jaw"):
            row[name] = self.errors.get(name)
        for name in ("yaw_deg", "pitch_deg", "roll_deg", "rotation_deg"):
            row[name] = self.rotation.get(name)
        row["position_error"] = self.position_error
        row["landmark_error"] = self.landmark_error
        return row

    def text(self) -> str:
        """Short human text: 'id 0.843, shape 0.113, pose 0.056, exp 0.135, light 0.105, yaw 3.1°, ...'."""
        if not self.face_found:
            return "no face found"
        parts = [f"id {self.identity_similarity:.3f}"]
        if not self.head_fitted:
            return parts[0] + ", head not fitted"
        parts += [f"{SHORT_NAMES[n]} {self.errors[n]:.3f}" for n in PAPER_CODES]
        parts += [f"{n} {self.rotation[n + '_deg']:.1f}°" for n in ("yaw", "pitch", "roll")]
        return ", ".join(parts)


@dataclass
class ImageScore:
    faces: list[FaceScore]  # one per unit scored, in unit order
    width: int
    height: int
    overlay: Image.Image | None = None  # target landmarks (green) and fitted ones (red) over the image

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "units": [f.to_dict() for f in self.faces]}

    def infotext(self) -> dict[str, str]:
        """{'CapHuman score 1': 'id 0.843, shape …'} per unit (the key numbers the unit as the UI does)."""
        return {f"CapHuman score {face.unit + 1}": face.text() for face in self.faces}
