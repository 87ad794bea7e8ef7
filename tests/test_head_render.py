"""Rasterizer against analytic cases, the rendered hint against the reference, and the pipeline's frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from preprocessors.head.assets import HeadAssets
from preprocessors.head.codes import mix_codes
from preprocessors.head.decode import decode
from preprocessors.head.flame import Flame
from preprocessors.head.frames import SquareFrame, square_to_canvas
from preprocessors.head.mesh import load_obj
from preprocessors.head.pipeline import HeadPipeline, ManualHead
from preprocessors.head.projection import inverse_tform
from preprocessors.head.rasterizer import interpolate, rasterize
from preprocessors.head.renderer import HeadRenderer
from preprocessors.head.texture import FlameTexture
from tests.conftest import assert_pixels_close


def pixel_centre(index: int, size: int) -> float:
    return (2 * index + 1) / size - 1


def test_triangle_coverage_and_barycentrics():
    size = 9
    corners = np.array([[-0.93, -0.87], [0.91, -0.9], [-0.88, 0.95]])
    tri = torch.tensor(np.concatenate([corners, np.ones((3, 1))], 1)[None], dtype=torch.float32)
    frags = rasterize(tri, torch.tensor([[0, 1, 2]]), size, size)
    (ax, ay), (bx, by), (cx, cy) = corners
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    checked = 0
    for row in range(size):
        for col in range(size):
            x, y = pixel_centre(col, size), pixel_centre(row, size)
            w0 = ((bx - x) * (cy - y) - (by - y) * (cx - x)) / area
            w1 = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) / area
            w2 = 1 - w0 - w1
            if min(abs(w0), abs(w1), abs(w2)) < 1e-4:
                continue  # on an edge: either answer is right
            inside = min(w0, w1, w2) > 0
            assert (frags.pix_to_face[0, row, col].item() == 0) == inside, (row, col)
            if inside:
                checked += 1
                torch.testing.assert_close(frags.bary[0, row, col], torch.tensor([w0, w1, w2]).float(),
                                           atol=1e-5, rtol=0)
    assert checked > 20


def test_image_axes_x_right_y_down_and_non_square():
    tri = torch.tensor([[[0.5, 0.5, 1.0], [1.0, 0.5, 1.0], [1.0, 1.0, 1.0]]])  # bottom-right corner region
    frags = rasterize(tri, torch.tensor([[0, 1, 2]]), 6, 12)
    covered = torch.nonzero(frags.pix_to_face[0] >= 0)
    assert covered[:, 0].min() >= 4 and covered[:, 1].min() >= 9


def test_nearest_face_wins_whatever_the_order():
    square = [[-1, -1], [1, -1], [-1, 1]]
    near = torch.tensor([[x, y, 1.0] for x, y in square])
    far = torch.tensor([[x, y, 2.0] for x, y in square])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for verts, expected in ((torch.cat([far, near])[None], 1), (torch.cat([near, far])[None], 0)):
        frags = rasterize(verts, faces, 4, 4)
        assert (frags.pix_to_face[0][frags.pix_to_face[0] >= 0] == expected).all()
        assert torch.allclose(frags.zbuf[0][frags.pix_to_face[0] >= 0], torch.tensor(1.0))


def test_back_faces_are_kept_and_degenerate_faces_skipped():
    clockwise = torch.tensor([[[-0.9, -0.9, 1.0], [-0.9, 0.9, 1.0], [0.9, -0.9, 1.0]]])
    assert (rasterize(clockwise, torch.tensor([[0, 1, 2]]), 8, 8).pix_to_face >= 0).any()
    line = torch.tensor([[[-0.9, -0.9, 1.0], [0.0, 0.0, 1.0], [0.9, 0.9, 1.0]]])
    assert (rasterize(line, torch.tensor([[0, 1, 2]]), 8, 8).pix_to_face < 0).all()


def test_interpolation_of_vertex_attributes():
    tri = torch.tensor([[[-1.0, -1.0, 1.0], [3.0, -1.0, 1.0], [-1.0, 3.0, 1.0]]])  # covers the whole image
    frags = rasterize(tri, torch.tensor([[0, 1, 2]]), 4, 4)
    attrs = torch.tensor([[[[0.0], [4.0], [0.0]]]])  # x-coordinate ramp
    values = interpolate(frags, attrs)[0, 0]
    expected = torch.tensor([pixel_centre(c, 4) + 1 for c in range(4)]).expand(4, 4)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)


def test_hint_matches_reference(deca_assets, head_reference):
    flame = Flame.from_files(deca_assets / "generic_model.pkl", deca_assets / "landmark_embedding.npy")
    texture = FlameTexture.from_file(deca_assets / "FLAME_texture.npz")
    renderer = HeadRenderer(load_obj(deca_assets / "head_template.obj"))

    def codes(who):
        code = {k: head_reference[f"encode.{who}.{k}"] for k in ("shape", "tex", "exp", "pose", "cam", "light")}
        code["tform"] = inverse_tform(head_reference[f"crop.{who}.tform"])
        return code

    out = decode(mix_codes(codes("identity"), codes("pose"), "position,pose"), flame, texture, renderer, 256, 256)
    hint = out.maps.hint()
    reference = head_reference["hint.position+pose"]
    assert hint.shape == reference.shape and out.maps.alpha.sum() > 1000
    # the reference was rendered on another machine: float32 noise, except on a few pixels of tiny triangles
    assert_pixels_close(hint, reference, atol=1e-5, max_fraction=5e-3, outlier_atol=1e-2)
    torch.testing.assert_close(out.landmarks2d, head_reference["hint.position+pose.landmarks2d"], atol=1e-5, rtol=0)


def test_square_to_canvas_follows_resize_modes():
    frame = SquareFrame(200, 100, 512)  # a landscape photo, letterboxed with 50 px above and below
    corners = torch.tensor([[[-1.0, -0.5, 0.0], [1.0, 0.5, 0.0]]])  # the photo's own corners in the square
    just = square_to_canvas(corners, frame, 300, 300, "Just Resize")
    torch.testing.assert_close(just[0, :, :2], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    crop = square_to_canvas(corners, frame, 300, 300, "Crop and Resize")  # height fits, width overflows
    torch.testing.assert_close(crop[0, :, 1], torch.tensor([-1.0, 1.0]))
    assert crop[0, 0, 0] < -1 and crop[0, 1, 0] > 1
    fill = square_to_canvas(corners, frame, 300, 300, "Resize and Fill")  # width fits, bars above/below
    torch.testing.assert_close(fill[0, :, 0], torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(fill[0, :, 1], torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match="resize mode"):
        square_to_canvas(corners, frame, 300, 300, "Stretch")


@pytest.fixture(scope="module")
def pipeline(deca_assets):
    return HeadPipeline(HeadAssets.find([deca_assets]), deca_size=256)


def photos(deca_assets):
    return (Image.open(deca_assets / "identity.png"), Image.open(deca_assets / "pose.png"),
            np.loadtxt(deca_assets / "identity.txt"), np.loadtxt(deca_assets / "pose.txt"))


def test_pipeline_any_size_and_hires_rerender_without_reencoding(pipeline, deca_assets):
    identity, pose, lm_id, lm_pose = photos(deca_assets)
    small = pipeline.render(identity, pose, width=384, height=256, identity_landmarks=lm_id, pose_landmarks=lm_pose)
    assert small.hint.shape == (1, 9, 256, 384) and small.maps.alpha.sum() > 100
    calls = []
    handle = pipeline.models()[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        large = pipeline.render(identity, pose, width=768, height=512, identity_landmarks=lm_id,
                                pose_landmarks=lm_pose, modes="position,pose,lighting")
    finally:
        handle.remove()
    assert calls == [] and large.hint.shape == (1, 9, 512, 768)
    ratio = large.maps.alpha.sum() / small.maps.alpha.sum()
    assert 3.6 < ratio < 4.4  # the same head, twice the size in each direction
    np.testing.assert_allclose(large.landmarks / 2, small.landmarks, atol=0.5)


def test_pipeline_manual_head_and_preview(pipeline, deca_assets):
    identity, pose, lm_id, _ = photos(deca_assets)
    left = pipeline.render(identity, None, width=256, height=256, identity_landmarks=lm_id,
                           manual=ManualHead(center_x=0.3, scale=0.4))
    right = pipeline.render(identity, None, width=256, height=256, identity_landmarks=lm_id,
                            manual=ManualHead(center_x=0.7, scale=0.4, yaw=40))
    again = pipeline.render(identity, None, width=256, height=256, identity_landmarks=lm_id,
                            manual=ManualHead(center_x=0.3, scale=0.4))
    assert again is left  # a repeated generation re-renders nothing
    cols = lambda r: torch.nonzero(r.maps.alpha[0, 0].sum(0)).float().mean()  # noqa: E731
    assert cols(left) < 128 < cols(right)
    assert not torch.equal(left.maps.normal, right.maps.normal)
    preview = pipeline.preview(left, pose)
    assert set(preview) == {"normal", "albedo", "shading", "alpha", "landmarks"}
    assert all(image.size == (256, 256) for image in preview.values())
