"""One face per photo in every stage (FaceNet, face parsing/CLIP, DECA), EXIF orientation in the head stage, and the
whole-photo fallback end to end. Real facenet-pytorch MTCNN (its weights ship in the wheel) on a two-person photo made
of ../shared's identity portrait at two scales."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from caphuman_ext.unit.builder import UnitBuilder
from caphuman_ext.unit.params import unit_from_dict
from preprocessors import identity as ident
from preprocessors.head.assets import HeadAssets
from preprocessors.head.detect import NoHeadFoundError
from preprocessors.head.pipeline import HeadPipeline
from preprocessors.identity.face_parsing import FACE_ONLY_EXCLUDED_CLASSES, face_window
from preprocessors.identity.facenet import find_faces


@pytest.fixture(scope="module")
def pipeline(deca_assets):
    return HeadPipeline(HeadAssets.find([deca_assets]), deca_size=256)


@pytest.fixture(scope="module")
def two_people(photo):
    """The portrait at full size on the left, at 300 px on the right: face 0 (largest) left, face 1 right."""
    canvas = Image.new("RGB", (900, 512), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    canvas.paste(photo.resize((300, 300)), (580, 100))
    return canvas


@pytest.fixture(scope="module")
def noise():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))


def centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def crop_centre_in_photo(codes) -> np.ndarray:
    """Where the centre of DECA's 224² crop lies in the photo: the crop transform undone, then the letterbox."""
    point = np.array([111.5, 111.5, 1.0]) @ codes.codes["tform"][0].double().numpy()  # inverse(tform).T: crop -> square
    frame = codes.frame
    return point[:2] * frame.side / frame.size - np.array(frame.pad)


def within(points_xy: np.ndarray, box, reach: float) -> bool:
    """All points within `reach` × the box's larger side of its centre (max norm)."""
    size = max(box[2] - box[0], box[3] - box[1])
    return bool((np.abs(points_xy - centre(box)).max(-1) <= reach * size + 1).all())


def test_the_two_faces_are_found_largest_first(two_people):
    faces = find_faces(two_people)
    assert len(faces) == 2 and faces[0].area > 3 * faces[1].area
    assert faces[0].box[2] < 450 < faces[1].box[0]


@pytest.mark.parametrize("index", [0, 1])
def test_face_index_is_one_face_in_every_stage(encoder, pipeline, synthetic, two_people, index):
    face = find_faces(two_people)[index]
    identity = encoder.encode(two_people, face_index=index)
    codes = pipeline.photo_codes(two_people, face_index=index)
    assert identity.face_box == face.box == codes.face_box and codes.method == "mtcnn"

    facenet = ident.load_facenet(synthetic / "20180402-114759-vggface2.pt")
    expected = ident.face_embedding(facenet, ident.face_crop(two_people, face))
    torch.testing.assert_close(identity.face_embedding, expected, atol=1e-6, rtol=0)

    # CLIP's image: the min(W, H) square around the chosen face; only that face's parts are kept
    left, top, right, bottom = face_window(two_people.size, face.box)
    assert identity.face_only.size == (512, 512) and left <= face.box[0] and face.box[2] <= right
    kept = np.argwhere((np.asarray(identity.face_only) != 255).any(-1))[:, ::-1] + np.array([left, top])
    assert len(kept) > 50 and within(kept, face.box, 1.0)
    face_parts = np.argwhere(~np.isin(identity.parsing, FACE_ONLY_EXCLUDED_CLASSES))[:, ::-1]
    assert identity.parsing.shape == (512, 900) and within(face_parts, face.box, 1.0)
    window = np.asarray(two_people)[top:bottom, left:right]
    painted = np.asarray(identity.face_only)
    assert np.array_equal(painted[painted != 255], window[painted != 255])

    # DECA's crop is centred on the same face, as DECA centres a detector box (0.12 × its size lower)
    size = (face.box[2] - face.box[0] + face.box[3] - face.box[1]) / 2
    np.testing.assert_allclose(crop_centre_in_photo(codes), centre(face.box) + [0, 0.12 * size], atol=2.0)


def test_the_two_faces_give_two_identities(encoder, pipeline, two_people):
    first, second = (encoder.encode(two_people, face_index=i) for i in (0, 1))
    assert not torch.allclose(first.face_embedding, second.face_embedding, atol=1e-3)
    assert not torch.allclose(first.clip_tokens, second.clip_tokens, atol=1e-3)
    assert not np.array_equal(np.asarray(first.face_only), np.asarray(second.face_only))
    a, b = (pipeline.photo_codes(two_people, face_index=i) for i in (0, 1))
    assert not torch.allclose(a.codes["tform"], b.codes["tform"])
    assert not torch.equal(a.codes["shape"], b.codes["shape"])


@pytest.mark.parametrize("index", [0, 1])
def test_head_is_drawn_where_the_chosen_face_is(pipeline, two_people, index):
    """modes 'pose' keeps the identity photo's placement: the head lands on the chosen face."""
    hint = pipeline.render(two_people, two_people, modes="pose", width=450, height=256, resize_mode="Just Resize",
                           face_index=index)
    ys, xs = torch.nonzero(hint.maps.alpha[0, 0], as_tuple=True)
    x0, y0, x1, y1 = find_faces(two_people)[index].box
    assert len(xs) > 50
    assert x0 < xs.double().mean() * 2 < x1 and y0 < ys.double().mean() * 2 < y1
    assert hint.info["identity_face_box"] == (x0, y0, x1, y1)


def test_single_face_photo_keeps_the_reference_path(encoder, photo):
    identity = encoder.encode(photo)
    assert identity.face_only.size == photo.size and len(identity.faces) == 1


def test_face_index_beyond_the_faces_is_a_clear_error(pipeline, two_people):
    with pytest.raises(NoHeadFoundError, match="face 3 was asked for but the reference photo has 2"):
        pipeline.photo_codes(two_people, face_index=2)


def exif_rotated(image: Image.Image, orientation: int = 6) -> Image.Image:
    """A PNG whose pixels are stored turned, with the EXIF orientation that shows them as `image`."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6: turn 90° clockwise to display
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_exif_orientation_is_applied_in_the_head_stage(pipeline, photo):
    rotated = exif_rotated(photo)
    assert rotated.size == (photo.height, photo.width) and np.array_equal(
        np.asarray(ident.load_image(rotated)), np.asarray(photo))
    for identity, pose in ((photo, photo), (rotated, photo), (photo, rotated)):
        pipeline.cache.clear()
        pipeline.hints.clear()
        hint = pipeline.render(identity, pose, modes="position,pose", width=128, height=96)
        codes = pipeline.photo_codes(identity)
        if identity is photo and pose is photo:
            upright_hint, upright_tform = hint.hint, codes.codes["tform"]
        else:
            assert torch.equal(hint.hint, upright_hint) and torch.equal(codes.codes["tform"], upright_tform)


def test_no_face_fits_the_whole_photo_only_when_allowed(pipeline, noise, photo):
    assert find_faces(noise) == ()
    with pytest.raises(NoHeadFoundError, match="no face was found"):
        pipeline.render(noise, None, width=96, height=96)
    hint = pipeline.render(noise, None, width=96, height=96, allow_whole_image=True)
    assert torch.isfinite(hint.hint).all() and hint.maps.alpha.sum() > 50 and hint.hint[:, :3].abs().sum() > 0
    codes = pipeline.photo_codes(noise, allow_whole_image=True)
    assert codes.method == "whole" and codes.face_box is None
    np.testing.assert_allclose(crop_centre_in_photo(codes), [149.5, 99.5], atol=1.0)  # DECA's centred crop
    flat = Image.new("RGB", (256, 256), (120, 160, 200))
    with pytest.raises(NoHeadFoundError, match="no face was found in the pose photo"):
        pipeline.render(photo, flat, width=96, height=96)
    posed = pipeline.render(photo, flat, width=96, height=96, allow_whole_image=True)
    assert torch.isfinite(posed.hint).all() and posed.maps.alpha.sum() > 50


def test_unit_passes_face_index_and_whole_photo_to_the_head(deca_assets, two_people, noise):
    builder = UnitBuilder([deca_assets], allow_download=False)
    cpu = torch.device("cpu")
    second = unit_from_dict({"enabled": True, "reference_images": [two_people], "face_index": 1})
    assert builder.render(second, 96, 64, cpu).info["identity_face_box"] == find_faces(two_people)[1].box
    strict = unit_from_dict({"enabled": True, "reference_images": [noise]})
    with pytest.raises(NoHeadFoundError, match="no face was found"):
        builder.render(strict, 96, 64, cpu)
    whole = unit_from_dict({"enabled": True, "reference_images": [noise], "allow_whole_image": True})
    hint = builder.hint(whole, 96, 64, cpu)
    assert hint.shape == (1, 9, 64, 96) and torch.isfinite(hint).all() and hint[:, :3].abs().sum() > 0


def test_one_face_region_stops_at_the_other_face():
    from preprocessors.identity.face_parsing import one_face_region

    big, small = (10.0, 10.0, 50.0, 50.0), (60.0, 20.0, 80.0, 40.0)  # centres (30, 30) and (70, 30), sizes 40, 20
    region = one_face_region((100, 120), [big, small], big)
    assert region[30, 30] and not region[30, 70] and not region[95, 30]  # own centre; the other face; beyond reach
    # along the line between the centres the border lies where the size-normalised distances are equal: x = 56.67
    assert region[30, 55] and not region[30, 58]
    assert one_face_region((100, 120), [big, small], small)[30, 58]
