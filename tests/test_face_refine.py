"""Face refine (per unit `refine`): after the image, one img2img inpaint "only masked" pass per unit's head, run as
the webui's own nested job (tests/webui_sim.py's modules.processing), with the steerable CapFace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from caphuman_ext import external_code
from tests import webui_sim
from tests.webui_jobs import STEERABLE, generate, unit

SIZE = 256
REFINE = dict(refine=True, refine_size=128, refine_denoise=0.6, refine_padding=16)


@pytest.fixture
def refine_jobs(monkeypatch):
    """Every nested job the refine runs, in order."""
    import sys

    jobs = []
    processing = sys.modules["modules.processing"]
    original = processing.process_images

    def spy(p):
        jobs.append(p)
        return original(p)

    monkeypatch.setattr(processing, "process_images", spy)
    return jobs


def pictures(webui, units, **fields):  # noqa: F811
    _, p = generate(webui, units, width=SIZE, height=SIZE, **fields)
    return [webui_sim.picture_tensor(picture) for picture in p.pictures], p


def box_region(box) -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    return inside


def test_refine_repaints_the_head_box_and_nothing_outside_the_blend_mask(webui, refine_jobs):  # noqa: F811
    head = unit(webui, model=STEERABLE, center_x=0.4, center_y=0.4, scale=0.3)
    plain, _ = pictures(webui, [head])
    assert not refine_jobs  # off by default
    refined, p = pictures(webui, [{**head, **REFINE}])
    assert len(refine_jobs) == 1
    job = refine_jobs[0]
    assert job.caphuman_refine.position == 0 and job.width == job.height == 128
    assert job.caphuman_generation is None  # the pass ended; CapHuman acted in it with the unit:
    assert "CapHuman 1" in job.extra_generation_params
    change = (refined[0] - plain[0]).abs().mean(0)
    blend = torch.from_numpy(np.asarray(job.mask_for_overlay) > 0)
    assert float(change[~blend].max()) == 0
    box = external_code.head_box(head, SIZE, SIZE)
    assert job.caphuman_refine.box == box
    assert float(change[box_region(box)].mean()) > 1.0
    text = p.extra_generation_params["CapHuman 1"]
    assert "refine True" in text and "refine_denoise 0.6" in text and "refine_size 128" in text


def test_the_refine_pass_places_the_first_pass_head_in_its_crop(webui, refine_jobs, monkeypatch):  # noqa: F811
    """The pass renders the whole picture's canvas and cuts the crop out (the same head), no head of its own."""
    from tests.webui_jobs import rendered_hints

    hints = rendered_hints(webui, monkeypatch)
    pictures(webui, [unit(webui, model=STEERABLE, center_x=0.4, center_y=0.4, scale=0.3, **REFINE)])
    x, y, w, h = refine_jobs[0].paste_to
    assert (SIZE, SIZE) in hints
    assert (round(SIZE * 128 / w), round(SIZE * 128 / h)) in hints  # the canvas at the crop's density


def test_two_units_each_head_is_refined_with_its_own_identity(webui, refine_jobs):  # noqa: F811
    """Pose-only over the whole first pass: the first pass does not depend on the identities (the heads come from
    the same reference photo); the refine passes use them from their first step. Swap the units' identities: each
    head's refined pixels follow its unit's identity, and one unit's identity never reaches the other head."""
    photo = webui.photo
    other = Image.merge("RGB", photo.split()[::-1])  # same head render (photo 1), another identity (photos averaged)
    p_id, q_id = [photo], [photo, other]
    left = dict(model=STEERABLE, center_x=0.25, center_y=0.3, scale=0.25, pose_only=1.0, **REFINE)
    right = {**left, "center_x": 0.75, "center_y": 0.7}

    def run(left_photos, right_photos, refine=True):
        units = [{**unit(webui, **left), "reference_images": left_photos, "refine": refine},
                 {**unit(webui, **right), "reference_images": right_photos, "refine": refine}]
        return pictures(webui, units)[0][0]

    first_pq, first_qp = run(p_id, q_id, refine=False), run(q_id, p_id, refine=False)
    assert torch.equal(first_pq, first_qp)  # the identities do not reach the first pass
    pq, qp, pp = run(p_id, q_id), run(q_id, p_id), run(p_id, p_id)
    boxes = [external_code.head_box(unit(webui, **fields), SIZE, SIZE) for fields in (left, right)]
    regions = [box_region(box) for box in boxes]
    assert not (regions[0] & regions[1]).any()
    assert torch.equal(pq[:, regions[0]], pp[:, regions[0]])  # left: P in both
    assert not torch.equal(pq[:, regions[0]], qp[:, regions[0]])  # left: P, then Q
    assert torch.equal(qp[:, regions[1]], pp[:, regions[1]])  # right: P in both
    assert not torch.equal(pq[:, regions[1]], qp[:, regions[1]])  # right: Q, then P
    assert [job.caphuman_refine.position for job in refine_jobs[-6:]] == [0, 1] * 3


def test_the_refine_pass_copies_no_function_of_the_job_into_its_infotext(webui, refine_jobs):  # noqa: F811
    """A1111's hires job keeps functions of the job among its infotext entries ("Hires prompt" reads
    `p.all_hr_prompts`, which an img2img job has not): copied into the refine pass they raise when its infotext is
    made ("Error creating infotext" in the console at every hires refine). Values are copied, functions are not."""
    head = unit(webui, model=STEERABLE, center_x=0.4, center_y=0.4, scale=0.3)
    entries = {"Hires prompt": lambda p, index: p.all_hr_prompts[index], "Hires upscale": 1.5}
    pictures(webui, [{**head, **REFINE}], extra_generation_params=dict(entries))
    assert len(refine_jobs) == 1
    copied = refine_jobs[0].extra_generation_params
    assert not any(callable(value) for value in copied.values()) and copied["Hires upscale"] == 1.5
