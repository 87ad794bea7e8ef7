"""The evaluation grid (HumanIPHC-style): identities × prompts × head conditions × seeds, and the settings compared
(strengths × pose-only phases × samplers × step counts).

- identities: a folder; each image is one person (name = file stem), each subfolder one person with several photos.
- head conditions: a folder; each image is a pose photo (name = file stem, copied per `modes`), each `.json` file a
  set of unit fields without a photo (sliders, e.g. {"yaw": 30, "expression": 1.5}).
- prompts: a text file, one prompt per line; empty lines and lines starting with '#' are skipped.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from caphuman_ext.unit.params import FIELD_ORDER, UnitValidationError, unit_from_dict
from preprocessors.identity.image_io import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CONDITION_FIELDS = set(FIELD_ORDER) - {"enabled", "model", "reference_images", "more_reference_images", "pose_image",
                                       "strength", "pose_only", "face_index", "allow_whole_image"}
MAX_PROMPT_LINES = 10_000


class ProtocolError(ValueError):
    """An input of the protocol (folder, file, condition) is unusable; the message names it."""


def b64_image(path: Path) -> str:
    """A photo as base64 PNG (EXIF-rotated, RGB), as the webui API takes images."""
    try:
        image = load_image(path)
    except Exception as error:  # noqa: BLE001 - every unreadable file is reported by name
        raise ProtocolError(f"{path}: not a readable image ({error})") from error
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Identity:
    name: str
    photos: list[Path]


@dataclass
class Condition:
    name: str
    pose_photo: Path | None = None
    fields: dict = field(default_factory=dict)  # unit fields: modes, sliders, resize_mode


def load_identities(folder: Path) -> list[Identity]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtocolError(f"--identities {folder}: not a folder")
    found = [Identity(p.stem, [p]) for p in _images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = _images(sub)
        if photos:
            found.append(Identity(sub.name, photos))
    if not found:
        raise ProtocolError(f"--identities {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) or folders of images")
    names = [i.name for i in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ProtocolError(f"--identities {folder}: names used twice: {duplicates}")
    return found


def load_conditions(folder: Path, modes: list[str]) -> list[Condition]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtocolError(f"--poses {folder}: not a folder")
    found = [Condition(p.stem, p, {"modes": list(modes)}) for p in _images(folder)]
    for path in sorted(folder.glob("*.json")):
        try:
            fields_ = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ProtocolError(f"{path}: not a JSON object ({error})") from error
        if not isinstance(fields_, dict):
            raise ProtocolError(f"{path}: expected a JSON object of unit fields")
        unknown = sorted(set(fields_) - CONDITION_FIELDS)
        if unknown:
            raise ProtocolError(f"{path}: {unknown[0]!r} is not a head-condition field "
                                f"(allowed: {', '.join(sorted(CONDITION_FIELDS))})")
        try:
            unit_from_dict(fields_)
        except UnitValidationError as error:
            raise ProtocolError(f"{path}: {error}") from error
        found.append(Condition(path.stem, None, fields_))
    if not found:
        raise ProtocolError(f"--poses {folder}: no pose photos and no .json head conditions")
    return found


def load_prompts(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()[:MAX_PROMPT_LINES]
    except (OSError, UnicodeDecodeError) as error:
        raise ProtocolError(f"--prompts {path}: cannot read it as UTF-8 text ({error})") from error
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ProtocolError(f"--prompts {path}: no prompts (one per line)")
    return prompts


@dataclass(frozen=True)
class Job:
    """One image of the grid; `key` identifies its CSV row (resuming skips keys already there)."""

    identity: str
    prompt_index: int
    prompt: str
    condition: str
    seed: int
    strength: float
    pose_only: float
    sampler: str = ""  # "" = the webui's default
    steps: int = 25

    @property
    def key(self) -> tuple[str, ...]:
        return (self.identity, str(self.prompt_index), self.condition, str(self.seed), f"{self.strength:g}",
                f"{self.pose_only:g}", self.sampler, str(self.steps))

    def image_name(self) -> str:
        safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", part) for part in self.key]
        return "__".join(safe) + ".png"


KEY_COLUMNS = ("identity", "prompt_index", "condition", "seed", "strength", "pose_only", "sampler", "steps")


def jobs(identities: list[Identity], prompts: list[str], conditions: list[Condition], seeds: list[int],
         strengths: list[float], pose_only: list[float], samplers: list[str] = ("",),
         steps: list[int] = (25,)) -> Iterator[Job]:
    settings = list(itertools.product(strengths, pose_only, samplers, steps))
    for identity, (index, prompt), condition, seed in itertools.product(identities, enumerate(prompts), conditions,
                                                                        seeds):
        for strength, tau, sampler, count in settings:
            yield Job(identity.name, index, prompt, condition.name, seed, strength, tau, sampler, count)


def unit_object(photos: list[str], condition: Condition, condition_photo: str | None, strength: float,
                pose_only: float, model: str) -> dict:
    """The CapHuman unit object of one job (photos already base64)."""
    unit = {"enabled": True, "model": model, "reference_images": photos, "strength": strength,
            "pose_only": pose_only, **condition.fields}
    if condition_photo is not None:
        unit["pose_image"] = condition_photo
    return unit
