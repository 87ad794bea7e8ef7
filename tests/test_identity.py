"""Identity encoder: every stage against the reference run (../shared/parity), robustness and failure cases."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from preprocessors import identity as ident
from preprocessors.identity import weights
from tests.conftest import assert_within_float32_noise, float32_noise
from tests.inputs import tiny_clip_state


@pytest.fixture(scope="session")
def reference(parity_dir):
    return load_file(parity_dir / "identity_astronaut_A.safetensors")


def test_face_parsing_matches_reference(synthetic, photo, reference):
    """Labels are an argmax: where two classes' logits are within float32 noise, another machine may pick either."""
    assert np.array_equal(np.asarray(photo), reference["input.image"].numpy())
    model = ident.load_parsing_model(synthetic / "79999_iter.pth")
    labels = ident.parse_face(model, photo)
    logits = parsing_logits(model, photo)
    assert_within_float32_noise(logits[:, :, 192:320, 192:320], reference["parse.logits_center128"],
                                scale=logits.abs().max().item(), what="parsing logits")
    top2 = logits[0].topk(2, dim=0)
    tie = (top2.values[0] - top2.values[1] <= float32_noise(logits.abs().max().item())).numpy()
    expected = reference["parse.labels"].numpy()
    runner_up = top2.indices[1].numpy()
    assert np.array_equal(labels[~tie], expected[~tie])
    assert ((labels == expected) | (runner_up == expected))[tie].all()
    assert tie.mean() < 1e-3  # a few pixels on class borders
    face_only = np.asarray(ident.paint_face_only(photo, labels))
    same = labels == expected
    assert np.array_equal(face_only[same], reference["parse.face_only"].numpy()[same])


def parsing_logits(model, photo) -> torch.Tensor:
    """BiSeNet's first output, (1, 19, H, W), with parse_face's preprocessing."""
    from preprocessors.identity.face_parsing import IMAGENET_MEAN, IMAGENET_STD

    pixels = torch.from_numpy(np.array(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        return model(((pixels - mean) / std)[None])[0]


def test_white_painting_is_the_class_mask(photo, reference):
    labels = reference["parse.labels"].numpy()
    painted = np.asarray(ident.paint_face_only(photo, labels))
    excluded = np.zeros_like(labels, dtype=bool)
    for cls in (0, 7, 8, 9, 14, 15, 16, 17, 18):
        excluded |= labels == cls
    assert excluded.any() and (~excluded).any()
    assert (painted[excluded] == 255).all()
    assert np.array_equal(painted[~excluded], np.asarray(photo)[~excluded])


def test_clip_preprocessing_matches_reference(reference):
    face_only = Image.fromarray(reference["parse.face_only"].numpy())
    pixels = ident.clip_pixel_values(face_only)
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels, reference["clip.pixel_values"], atol=1e-5, rtol=0)


def test_clip_preprocessing_of_a_wide_image_matches_torchvision():
    from torchvision.transforms import functional as TF

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 300, 3), dtype=np.uint8))
    ours = ident.clip_pixel_values(image)
    resized = image.resize((int(224 * 300 / 120), 224), Image.BICUBIC)
    independent = TF.normalize(TF.to_tensor(TF.center_crop(resized, [224, 224])),
                               [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(ours[0], independent, atol=1e-5, rtol=0)


def test_facenet_matches_reference(synthetic, photo, reference):
    detector = ident.load_face_detector()
    faces = ident.detect_faces(detector, photo)
    torch.testing.assert_close(torch.tensor(faces[0].box), reference["facenet.box"], atol=1e-3, rtol=0)
    crop = ident.face_crop(photo, faces[0])
    torch.testing.assert_close(crop, reference["facenet.crop"], atol=1e-6, rtol=0)
    model = ident.load_facenet(synthetic / "20180402-114759-vggface2.pt")
    embedding = ident.face_embedding(model, crop)
    assert embedding.shape == (1, 1, 512)
    torch.testing.assert_close(embedding[0], reference["facenet.embedding"], atol=1e-5, rtol=0)


def test_encoder_end_to_end(encoder, photo, reference):
    identity = encoder.encode(photo)
    assert identity.clip_tokens.shape == (1, 257, 64)
    torch.testing.assert_close(identity.face_embedding[0], reference["facenet.embedding"], atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(identity.face_only), reference["parse.face_only"].numpy())
    model = ident.build_clip_vision(tiny_clip_state())
    expected = model(pixel_values=reference["clip.pixel_values"]).last_hidden_state
    torch.testing.assert_close(identity.clip_tokens, expected, atol=1e-4, rtol=0)


def test_identity_feeds_capface_context(encoder, photo):
    from caphuman_ext import CapFace, CapFaceConfig

    identity = encoder.encode(photo)
    capface = CapFace(CapFaceConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                                    attention_levels=(0,), context_dim=16, clip_token_dim=64))
    assert capface.identity_context(identity.clip_tokens, identity.face_embedding).shape == (1, 258, 16)


def test_cache_recomputes_nothing(encoder, photo):
    encoder.encode(photo)
    calls = []
    handle = encoder._facenet.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = encoder.encode(photo.copy())
    finally:
        handle.remove()
    assert calls == [] and again.face_embedding.shape == (1, 1, 512)


def test_several_photos_average_embeddings_and_keep_sharpest_tokens(encoder, photo):
    blurred = photo.filter(__import__("PIL.ImageFilter", fromlist=["GaussianBlur"]).GaussianBlur(3))
    sharp, soft = encoder.encode(photo), encoder.encode(blurred)
    both = encoder.encode([blurred, photo])
    expected = torch.nn.functional.normalize(sharp.face_embedding + soft.face_embedding, dim=-1)
    torch.testing.assert_close(both.face_embedding, expected, atol=1e-6, rtol=0)
    assert both.photos == 2 and torch.equal(both.clip_tokens, sharp.clip_tokens)


def test_no_face_is_a_clear_error_and_fallback_is_explicit(encoder):
    blank = Image.new("RGB", (256, 256), (120, 160, 200))
    with pytest.raises(ident.NoFaceError, match="no face"):
        encoder.encode(blank)
    fallback = encoder.encode(blank, allow_whole_image=True)
    assert fallback.face_box is None and fallback.face_embedding.shape == (1, 1, 512)


def test_several_faces_largest_first_and_choosable(encoder, photo):
    canvas = Image.new("RGB", (900, 512), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    canvas.paste(photo.resize((300, 300)), (580, 100))
    detector = ident.load_face_detector()
    faces = ident.detect_faces(detector, canvas)
    assert len(faces) >= 2 and faces[0].area > faces[1].area and faces[0].box[0] < 512
    second = encoder.encode(canvas, face_index=1)
    assert second.face_box[0] > 512
    with pytest.raises(ident.NoFaceError, match="face 10"):
        encoder.encode(canvas, face_index=9)


def test_images_of_every_kind_load_as_rgb(photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 0))
    assert np.asarray(ident.load_image(rgba)).min() == 255  # transparent -> white
    gray = ident.load_image(photo.convert("L"))
    assert gray.mode == "RGB" and gray.size == photo.size
    sixteen = ident.load_image(np.asarray(photo, dtype=np.uint16) * 257)
    assert np.array_equal(np.asarray(sixteen), np.asarray(photo))
    floats = ident.load_image(np.asarray(photo, dtype=np.float32) / 255.0)
    assert np.abs(np.asarray(floats, dtype=int) - np.asarray(photo, dtype=int)).max() <= 1
    huge = ident.load_image(photo.resize((4096, 3000)))
    assert max(huge.size) == 2048
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    photo.crop((0, 0, 512, 300)).save(buffer, format="JPEG", exif=exif)
    assert ident.load_image(buffer.getvalue()).size == (300, 512)


@pytest.mark.parametrize("bad", [b"not an image", np.zeros((5,)), 42])
def test_bad_images_raise_image_error(bad):
    with pytest.raises(ident.ImageError):
        ident.load_image(bad)


def test_missing_models_say_which_file_goes_where(tmp_path):
    paths = ident.IdentityModelPaths(clip_vision=tiny_clip_state(), folders=[tmp_path], allow_download=False)
    with pytest.raises(weights.ModelFileMissingError, match="79999_iter.pth not found: put it in"):
        ident.IdentityEncoder(paths).encode(Image.new("RGB", (64, 64)))
    no_clip = ident.IdentityModelPaths(folders=[tmp_path], allow_download=False, hub_caches=[])
    with pytest.raises(weights.ModelFileMissingError, match="clip-vit-large-patch14.safetensors"):
        ident.IdentityEncoder(no_clip)._clip_state()


def test_unreachable_download_says_what_to_do(tmp_path):
    with pytest.raises(weights.ModelFileMissingError, match="put it in"):
        weights.download(weights.FACENET_VGGFACE2, tmp_path, url=(tmp_path / "absent.pt").as_uri())


def test_clip_tower_loads_with_or_without_the_vision_model_prefix():
    state = {k.removeprefix("vision_model."): v for k, v in tiny_clip_state(1).items()}
    prefixed = {f"vision_model.{k}": v for k, v in state.items()}  # as caphuman.ckpt stores it (transformers 4)
    pixels = torch.randn(1, 3, 224, 224)
    a = ident.clip_tokens(ident.build_clip_vision(state), pixels)
    b = ident.clip_tokens(ident.build_clip_vision(prefixed), pixels)
    assert a.shape == (1, 257, 64) and torch.equal(a, b)


def test_tiny_photo_is_no_face_not_a_crash(encoder):
    with pytest.raises(ident.NoFaceError):
        encoder.encode(Image.new("RGB", (12, 30), (200, 150, 120)))
    assert encoder.encode(Image.new("RGB", (12, 30)), allow_whole_image=True).face_box is None


def test_dark_sixteen_bit_png_stays_dark(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((32, 32), 127, dtype=np.uint16)).save(path)
    assert np.asarray(ident.load_image(path)).max() <= 1


def test_sharpness_does_not_favour_low_resolution(photo):
    from preprocessors.identity.encoder import sharpness

    box = (181.0, 62.0, 268.0, 172.0)
    half = photo.resize((256, 256), Image.BICUBIC)
    assert sharpness(photo, box) > sharpness(half, tuple(v / 2 for v in box))


def test_cache_depends_on_the_models(synthetic, photo):
    paths = ident.IdentityModelPaths(clip_vision=tiny_clip_state(0), folders=[synthetic], allow_download=False)
    encoder = ident.IdentityEncoder(paths)
    first = encoder.encode(photo)
    encoder.paths.clip_vision, encoder._clip = tiny_clip_state(5), None
    second = encoder.encode(photo)
    assert not torch.equal(first.clip_tokens, second.clip_tokens)
