"""Which generated face belongs to which unit: one face per unit, chosen by who it is and where it is.

cost[unit, face] = (1 - FaceNet cosine) + POSITION_WEIGHT · min(distance / head size, POSITION_CAP), where the
distance is between the face box's centre and the centre of the unit's target landmarks, in units of the target
head's size. The assignment minimising the total cost (Hungarian, `scipy.optimize.linear_sum_assignment`) wins;
units left without a face (fewer faces than units) count as "face not found".
The weight is a choice: similarity differences between people (real FaceNet: ~0.3 vs ~0.7) dominate, and the
position breaks ties between look-alikes, or decides when the identity is poorly kept.
"""

from __future__ import annotations

import numpy as np

POSITION_WEIGHT = 0.25
POSITION_CAP = 2.0


def landmark_box(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, size) of 68 landmarks in pixels; size = mean of their extent's width and height."""
    low, high = landmarks.min(0), landmarks.max(0)
    return (low + high) / 2, float((high - low).sum() / 2)


def cost_matrix(similarities: np.ndarray, face_centres: np.ndarray, target_centres: np.ndarray,
                target_sizes: np.ndarray) -> np.ndarray:
    """(units, faces) costs from (units, faces) similarities, (faces, 2) and (units, 2) centres, (units,) sizes."""
    distance = np.linalg.norm(target_centres[:, None, :] - face_centres[None, :, :], axis=-1)
    relative = np.minimum(distance / np.maximum(target_sizes[:, None], 1.0), POSITION_CAP)
    return (1.0 - similarities) + POSITION_WEIGHT * relative


def assign(costs: np.ndarray) -> list[int | None]:
    """For each unit (row), the face (column) it gets, or None."""
    from scipy.optimize import linear_sum_assignment

    chosen: list[int | None] = [None] * costs.shape[0]
    if costs.size == 0:
        return chosen
    rows, columns = linear_sum_assignment(costs)
    for row, column in zip(rows, columns):
        chosen[int(row)] = int(column)
    return chosen
