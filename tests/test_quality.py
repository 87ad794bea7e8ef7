"""Quality scores from the real detection/encoding code with tiny random weights (FaceNet, E_flame) and MTCNN's
shipped weights: exact when the image is the reference under its own head, moving the right way otherwise.

What random weights can and cannot show: FaceNet and E_flame are random, so their outputs carry no meaning of
their own. Similarity still ranks "same pixels" > "same photo, JPEG" > "another person" (checked below), and the
head's PLACE follows the image (MTCNN is trained; DECA's crop follows its box). A random E_flame's pose code does not
follow an in-plane rotation of the image (measured: 0.02° roll error after rotating the face by 25°), so the roll
direction is checked on the target side (the roll slider), on composed rotations, and by turning the image once
E_flame's pose rows are hand-set to a roll readout.
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from caphuman_ext.quality import Scorer
from caphuman_ext.quality.api import score_request
from caphuman_ext.quality.metrics import (
    axis_angle_to_euler,
    axis_angle_to_matrix,
    code_errors,
    rotation_errors,
)
from caphuman_ext.quality.target import target_codes
from caphuman_ext.unit.params import UnitValidationError, unit_from_dict
from preprocessors import identity as ident
from preprocessors.head.codes import euler_to_axis_angle
from tests.inputs import tiny_clip_state

ALL_MODES = ["position", "pose", "expression", "lighting"]


@pytest.fixture(scope="session")
def cameraman() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.camera()).convert("RGB")  # another real person


def identity_head(photo: Image.Image, modes=tuple(ALL_MODES), **fields) -> dict:
    """A unit whose target head is the photo's own: the pose photo is the reference itself."""
    return {"reference_images": [photo], "pose_image": photo, "modes": list(modes), **fields}


def forget(scorer: Scorer) -> None:
    """Drop every cached result (photo codes, hints, reference embeddings): the next score recomputes all."""
    scorer.references.clear()
    head = scorer.builder.head
    if head is not None:
        head.cache.clear()
        head.hints.clear()


# metrics on hand-set codes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (25, -10, 5), (-60, 30, -40), (80, 5, 10)])
def test_euler_readout_inverts_the_unit_sliders(yaw, pitch, roll):
    np.testing.assert_allclose(axis_angle_to_euler(euler_to_axis_angle(yaw, pitch, roll)[0]), (yaw, pitch, roll),
                               atol=1e-3)


def test_rotation_errors_follow_a_composed_roll():
    target = torch.tensor([0.3, -0.2, 0.1, 0.05, 0.0, 0.0])
    previous = 0.0
    for roll in (5.0, 15.0, 40.0):
        # the same head turned further about the viewing axis: R · Rz(roll), i.e. the roll slider moved by `roll`
        rz = axis_angle_to_matrix(euler_to_axis_angle(0, 0, roll)[0])
        composed = axis_angle_to_matrix(target[:3]) @ rz
        angle = math.acos((float(composed.trace()) - 1) / 2)
        axis = torch.tensor([composed[2, 1] - composed[1, 2], composed[0, 2] - composed[2, 0],
                             composed[1, 0] - composed[0, 1]]) / (2 * math.sin(angle))
        generated = torch.cat([axis * angle, target[3:].double()]).float()
        errors = rotation_errors(generated, target)
        assert errors["roll_deg"] == pytest.approx(roll, abs=1e-3) and errors["roll_deg"] > previous
        assert errors["yaw_deg"] == pytest.approx(0, abs=1e-3) and errors["pitch_deg"] == pytest.approx(0, abs=1e-3)
        assert errors["rotation_deg"] == pytest.approx(roll, abs=1e-3)
        previous = errors["roll_deg"]


def test_code_errors_are_the_rmse_of_each_code():
    zero = {"shape": torch.zeros(1, 100), "exp": torch.zeros(1, 50), "pose": torch.zeros(1, 6),
            "light": torch.zeros(1, 9, 3)}
    moved = {"shape": torch.full((1, 100), 0.1), "exp": torch.zeros(1, 50), "pose": torch.zeros(1, 6),
             "light": torch.zeros(1, 9, 3)}
    moved["exp"][0, :2] = torch.tensor([0.3, -0.4])  # rmse = 0.5 / sqrt(50)
    moved["pose"][0, 0] = 0.3
    moved["pose"][0, 3] = 0.1
    moved["light"][0, 0] = 0.2  # three numbers of 27
    errors = code_errors(moved, zero)
    assert errors["shape"] == pytest.approx(0.1)
    assert errors["expression"] == pytest.approx(0.5 / math.sqrt(50))
    assert errors["pose"] == pytest.approx(math.sqrt((0.09 + 0.01) / 6))
    assert errors["pose_global"] == pytest.approx(0.3 / math.sqrt(3))
    assert errors["jaw"] == pytest.approx(0.1 / math.sqrt(3))
    assert errors["lighting"] == pytest.approx(math.sqrt(3 * 0.04 / 27))


# the real scorer --------------------------------------------------------------------------------------------------
def test_reference_under_its_own_head_is_perfect(scorer, astronaut):
    result = scorer.score(astronaut, identity_head(astronaut))
    face = result.faces[0]
    assert face.face_found and face.head_fitted and face.faces_in_image == 1
    assert face.identity_similarity == pytest.approx(1.0, abs=1e-6)
    assert all(value == 0.0 for value in face.errors.values()), face.errors
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in face.rotation.values()), face.rotation
    assert face.position_error == pytest.approx(0.0, abs=1e-4)
    assert face.landmark_error == pytest.approx(0.0, abs=1e-4)
    assert result.overlay.size == astronaut.size
    assert result.infotext() == {"CapHuman score 1": "id 1.000, shape 0.000, pose 0.000, exp 0.000, light 0.000, "
                                                     "yaw 0.0°, pitch 0.0°, roll 0.0°"}


@pytest.mark.parametrize("modes", [["position", "pose"], ["pose"], ALL_MODES])
def test_pose_photo_of_the_reference_targets_the_identity_codes(scorer, astronaut, modes):
    """Whatever is copied from the reference itself (the default modes or others), the target is its own head."""
    unit = unit_from_dict({"enabled": True, **identity_head(astronaut, modes)})
    head = scorer.builder.head_pipeline(scorer.device)
    target = target_codes(head, unit)
    own = head.photo_codes(astronaut).codes
    assert all(torch.equal(target[k], own[k]) for k in ("shape", "exp", "pose", "light", "cam"))


def test_target_mixes_the_pose_photo_per_mode_like_the_hint(scorer, astronaut, cameraman):
    from caphuman_ext.quality.target import target_head

    head = scorer.builder.head_pipeline(scorer.device)
    own, other = head.photo_codes(astronaut).codes, head.photo_codes(cameraman).codes
    unit = lambda modes: unit_from_dict({"enabled": True, "reference_images": [astronaut],  # noqa: E731
                                         "pose_image": cameraman, "modes": modes})
    posed = target_codes(head, unit(["pose"]))
    assert torch.equal(posed["pose"][:, :3], other["pose"][:, :3]) and torch.equal(posed["pose"][:, 3:],
                                                                                  own["pose"][:, 3:])
    assert torch.equal(posed["shape"], own["shape"]) and torch.equal(posed["exp"], own["exp"])
    expressive = target_codes(head, unit(["expression"]))
    assert torch.equal(expressive["exp"], other["exp"]) and torch.equal(expressive["pose"][:, 3:],
                                                                        other["pose"][:, 3:])
    assert torch.equal(expressive["pose"][:, :3], own["pose"][:, :3])
    lit = target_codes(head, unit(["lighting"]))
    assert torch.equal(lit["light"], other["light"]) and torch.equal(lit["pose"], own["pose"])
    default = target_codes(head, unit(["position", "pose"]))  # the default modes, as the hint
    assert torch.equal(default["pose"][:, :3], other["pose"][:, :3]) and torch.equal(default["cam"], other["cam"])
    target = target_head(scorer.builder, unit(["pose"]), 256, 192, scorer.device)
    assert target.hint is scorer.builder.render(unit(["pose"]), 256, 192, scorer.device)  # the generation's hint


def test_scores_are_deterministic_and_drop_when_the_image_turns(scorer, astronaut):
    turned = astronaut.rotate(20, resample=Image.BICUBIC, center=(224, 117))  # about the face's centre
    first = scorer.score(turned, identity_head(astronaut), overlay=False).faces[0]
    forget(scorer)
    again = scorer.score(turned, identity_head(astronaut), overlay=False).faces[0]
    assert first.to_dict() == again.to_dict()  # recomputed from scratch, bit for bit
    assert first.face_found and first.head_fitted
    assert first.identity_similarity < 1.0 - 1e-4
    assert all(value > 0 for value in first.errors.values()), first.errors


def test_position_error_grows_as_the_face_moves_away_from_the_target(scorer, astronaut):
    errors = []
    for shift in (0, 20, 60):
        canvas = Image.new("RGB", astronaut.size, (128, 128, 128))
        canvas.paste(astronaut, (shift, 0))
        face = scorer.score(canvas, identity_head(astronaut), overlay=False).faces[0]
        errors.append(face.position_error)
    assert errors[0] == pytest.approx(0.0, abs=1e-4) and errors[0] < errors[1] < errors[2]
    head_size = 88.0  # the astronaut's face box is ~87 x 110 px; position error is in target head sizes
    assert 0.5 * 20 / head_size < errors[1] < 2 * 20 / head_size


def test_roll_slider_moves_the_roll_error_only(scorer, astronaut):
    scores = [scorer.score(astronaut, {"reference_images": [astronaut], "roll": roll}, overlay=False).faces[0]
              for roll in (0.0, 30.0)]
    flat, rolled = scores
    assert rolled.target_head["roll"] == pytest.approx(30.0, abs=1e-3)
    own_roll = flat.generated_head["roll"]
    assert flat.rotation["roll_deg"] == pytest.approx(abs(own_roll), abs=1e-3)
    assert rolled.rotation["roll_deg"] == pytest.approx(abs(30.0 - own_roll), abs=1e-3)
    assert rolled.rotation["roll_deg"] > flat.rotation["roll_deg"] and rolled.errors["pose"] > flat.errors["pose"]
    assert rolled.rotation["yaw_deg"] == pytest.approx(flat.rotation["yaw_deg"], abs=1e-3)
    assert rolled.rotation["pitch_deg"] == pytest.approx(flat.rotation["pitch_deg"], abs=1e-3)
    for name in ("shape", "expression", "lighting", "jaw"):  # sliders without a pose photo keep the identity's
        assert flat.errors[name] == 0.0 and rolled.errors[name] == 0.0


def test_turning_the_image_grows_the_roll_error_once_e_flame_reads_roll(scorer, astronaut):
    """A random E_flame does not see rotations, so its pose output is hand-set: the pose rows of its last layer
    become a least-squares readout of its own hidden features, fitted to the roll of this photo turned by -30..30°
    (the real crop path, captured with a hook). Turning the image by held-out angles must then grow the roll error
    through the whole chain (MTCNN box -> DECA crop -> E_flame -> axis-angle -> Euler), and leave yaw/pitch alone.
    It shows the plumbing, not that a random encoder estimates roll."""
    import copy

    from caphuman_ext.unit.builder import UnitBuilder
    from preprocessors.head.encoder import CODE_SIZES
    from preprocessors.head.pipeline import HeadPipeline

    shared = scorer.builder.head_pipeline(scorer.device)
    encoder, flame, texture, renderer = shared.models()
    encoder = copy.deepcopy(encoder)
    head = HeadPipeline(shared.assets, device=scorer.device, deca_size=256)  # 256: a quarter of the detection cost
    head._models = (encoder, flame, texture, renderer)  # the shared FLAME/texture/renderer, this encoder
    small = astronaut.resize((256, 256), Image.BICUBIC)
    turned = lambda angle: small.rotate(angle, resample=Image.BICUBIC, center=(112, 58))  # noqa: E731
    hidden = []
    hook = encoder.layers[1].register_forward_hook(lambda module, args, out: hidden.append(out.double()))
    angles = (-30, -15, 0, 15, 30)
    try:
        for angle in angles:
            head.photo_codes(turned(angle))
    finally:
        hook.remove()
    features = torch.cat([torch.cat(hidden), torch.ones(len(angles), 1, dtype=torch.float64)], 1)
    rolls = torch.cat([euler_to_axis_angle(0, 0, angle).double() for angle in angles])
    readout = torch.linalg.solve(features.T @ features + 1e-3 * torch.eye(features.shape[1], dtype=torch.float64),
                                 features.T @ rolls)
    start = CODE_SIZES["shape"] + CODE_SIZES["tex"] + CODE_SIZES["exp"]
    with torch.no_grad():
        encoder.layers[2].weight[start: start + 3] = readout[:-1].T.float()
        encoder.layers[2].bias[start: start + 3] = readout[-1].float()
    head.cache.clear()
    builder = UnitBuilder(scorer.builder.folders, allow_download=False)
    builder.head = head
    reading = Scorer(builder=builder, device=scorer.device)
    errors = [reading.score(turned(angle), identity_head(small), overlay=False).faces[0]
              for angle in (0, 8, 22)]
    rolls_seen = [face.rotation["roll_deg"] for face in errors]
    assert rolls_seen[0] == 0.0 and 0.0 < rolls_seen[1] < rolls_seen[2], rolls_seen
    assert rolls_seen[2] > 5.0
    assert all(face.rotation["yaw_deg"] < 0.5 and face.rotation["pitch_deg"] < 0.5 for face in errors)


def test_another_person_scores_lower_than_the_same_photo(scorer, astronaut, cameraman):
    buffer = io.BytesIO()
    astronaut.save(buffer, "JPEG", quality=80)
    jpeg = scorer.score(Image.open(buffer), identity_head(astronaut), overlay=False).faces[0]
    other = scorer.score(cameraman, identity_head(astronaut), overlay=False).faces[0]
    assert other.face_found and 1.0 > jpeg.identity_similarity > other.identity_similarity
    assert other.errors["shape"] > jpeg.errors["shape"]


def test_two_units_each_get_their_own_face(scorer, astronaut, cameraman):
    canvas = Image.new("RGB", (1024, 512), (128, 128, 128))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(cameraman, (512, 0))
    units = [{"reference_images": [cameraman], "center_x": 0.72, "center_y": 0.3},
             {"reference_images": [astronaut], "center_x": 0.22, "center_y": 0.2}]
    result = scorer.score(canvas, units)
    right, left = result.faces
    assert right.unit == 0 and left.unit == 1 and right.faces_in_image == left.faces_in_image == 2
    assert right.face_box[0] > 512 > left.face_box[2]
    assert right.head_fitted and left.head_fitted
    swapped = scorer.score(canvas, units[::-1], overlay=False)
    assert swapped.faces[0].face_box == left.face_box and swapped.faces[1].face_box == right.face_box
    one = scorer.score(canvas, units[1], overlay=False).faces[0]  # one unit, two faces: its own is chosen
    assert one.face_box == left.face_box


def test_no_face_is_reported_and_the_overlay_still_shows_the_target(scorer, astronaut):
    blank = Image.new("RGB", (320, 256), (90, 120, 150))
    result = scorer.score(blank, {"reference_images": [astronaut], "center_x": 0.5})
    face = result.faces[0]
    assert not face.face_found and face.identity_similarity is None and face.errors == {}
    assert face.text() == "no face found" and face.target_head["yaw"] == pytest.approx(0.0, abs=1e-6)
    target = scorer.builder.render(unit_from_dict({"enabled": True, "reference_images": [astronaut]}), 320, 256,
                                   scorer.device)
    x, y = np.round(target.landmarks[30]).astype(int)
    assert result.overlay.getpixel((int(x), int(y))) == (0, 255, 0)  # drawn by the head preview
    assert result.overlay.getpixel((2, 2)) == (90, 120, 150)


def test_reference_embedding_is_the_identity_encoders(scorer, synthetic, astronaut):
    paths = ident.IdentityModelPaths(clip_vision=tiny_clip_state(), folders=[synthetic], allow_download=False)
    encoded = ident.IdentityEncoder(paths).encode([astronaut, astronaut.transpose(Image.FLIP_LEFT_RIGHT)])
    unit = unit_from_dict({"enabled": True,
                           "reference_images": [astronaut, astronaut.transpose(Image.FLIP_LEFT_RIGHT)]})
    torch.testing.assert_close(scorer.reference(unit), encoded.face_embedding, atol=1e-6, rtol=0)


# the score route ---------------------------------------------------------------------------------------------
def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_score_request_answers_json_with_an_overlay(scorer, astronaut):
    unit = {"reference_images": [b64(astronaut)], "pose_image": b64(astronaut), "modes": ALL_MODES}
    answer = score_request({"image": b64(astronaut), "units": [unit], "overlay": True}, scorer)
    json.dumps(answer)
    assert answer["units"][0]["identity_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert answer["units"][0]["errors"]["pose"] == 0.0
    assert answer["infotext"]["CapHuman score 1"].startswith("id 1.000")
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay"])))
    assert overlay.size == astronaut.size


@pytest.mark.parametrize("payload, field", [
    ({"units": [{}]}, "image"),
    ({"image": "bm90IGFuIGltYWdl", "units": [{}]}, "image"),
    ({"image": "x", "units": []}, "units"),
    ({"image": "x", "units": [{}], "extra": 1}, "extra"),
])
def test_score_request_names_the_wrong_field(scorer, payload, field):
    with pytest.raises(UnitValidationError) as error:
        score_request(payload, scorer)
    assert error.value.field == field


def test_score_request_locates_a_wrong_unit_field(scorer, astronaut):
    with pytest.raises(UnitValidationError) as error:
        score_request({"image": b64(astronaut), "units": [{"reference_images": [b64(astronaut)]},
                                                           {"strength": 9}]}, scorer)
    assert error.value.field == "units[1].strength"
