"""FLAME: shape/expression/pose blend shapes, linear blend skinning, and the 68 landmarks DECA uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from safe_files.flame_pickle import load_flame_model, load_landmark_embedding
from safe_files.head_limits import (
    FLAME_KEYS,
    MAX_BLEND_SHAPES,
    MAX_FACES,
    MAX_JOINTS,
    MAX_LANDMARKS,
    MAX_VERTICES,
    HeadFileError,
    checked_array,
    checked_indices,
    within,
)

N_SHAPE, N_EXP = 100, 50
NECK_JOINT = 1


def _checked_model(model: dict, n_shape: int, n_exp: int, name: str) -> dict[str, np.ndarray]:
    """FLAME's arrays, each of the shape the others imply (vertex, face and joint counts within limits)."""
    if not isinstance(model, dict):
        raise HeadFileError(f"{name}: expected FLAME's dict of arrays, found {type(model).__name__}")
    missing = [k for k in FLAME_KEYS if k not in model]
    if missing:
        raise HeadFileError(f"{name}: not a FLAME model, missing {missing}")
    v_template = checked_array(name, "v_template", model["v_template"], (None, 3))
    vertices = within(name, "vertices", v_template.shape[0], 3, MAX_VERTICES)
    faces = checked_indices(name, "f", model["f"], (None, 3), vertices)
    within(name, "faces", faces.shape[0], 1, MAX_FACES)
    kintree = checked_array(name, "kintree_table", model["kintree_table"], (2, None), np.int64)
    joints = within(name, "joints", kintree.shape[1], 2, MAX_JOINTS)
    parents = kintree[0].copy()
    parents[0] = -1
    if any(not 0 <= parents[j] < j for j in range(1, joints)):
        raise HeadFileError(f"{name}: 'kintree_table' is not a tree in joint order")
    shapedirs = checked_array(name, "shapedirs", model["shapedirs"], (vertices, 3, None))
    within(name, "'shapedirs' blend shapes", shapedirs.shape[2], 300 + n_exp, MAX_BLEND_SHAPES)
    posedirs = checked_array(name, "posedirs", model["posedirs"], (vertices, 3, 9 * (joints - 1)))
    return {"v_template": v_template, "f": faces, "shapedirs": shapedirs, "posedirs": posedirs, "parents": parents,
            "J_regressor": checked_array(name, "J_regressor", model["J_regressor"], (joints, vertices)),
            "weights": checked_array(name, "weights", model["weights"], (vertices, joints))}


_LANDMARK_SHAPES = {"static_lmk": (None,), "dynamic_lmk": (79, None), "full_lmk": (None, None)}


def _checked_landmarks(landmarks: dict, faces: int, name: str) -> dict[str, torch.Tensor]:
    """DECA's landmark embedding: face indices within the mesh, finite barycentrics (79 contour angles)."""
    if not isinstance(landmarks, dict):
        raise HeadFileError(f"{name}: expected DECA's landmark dict, found {type(landmarks).__name__}")
    out = {}
    for prefix, shape in _LANDMARK_SHAPES.items():
        index_key, bary_key = f"{prefix}_faces_idx", f"{prefix}_bary_coords"
        if index_key not in landmarks or bary_key not in landmarks:
            raise HeadFileError(f"{name}: missing '{index_key}' / '{bary_key}'")
        index = checked_indices(name, index_key, _numpy(landmarks[index_key]), shape, faces)
        within(name, f"'{index_key}' entries", index.size, 1, MAX_LANDMARKS)
        bary = checked_array(name, bary_key, _numpy(landmarks[bary_key]), (*index.shape, 3))
        out[index_key], out[bary_key] = torch.from_numpy(index), torch.from_numpy(bary)
    return out


def _numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """(N, 3) axis-angle -> (N, 3, 3) rotation matrices (FLAME's formula, with its 1e-8 angle offset)."""
    angle = torch.norm(axis_angle + 1e-8, dim=1, keepdim=True)
    direction = axis_angle / angle
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    rx, ry, rz = direction.split(1, dim=1)
    zeros = torch.zeros_like(rx)
    k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)[None]
    return eye + sin * k + (1 - cos) * torch.bmm(k, k)


def _homogeneous(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    top = torch.cat([rotation, translation], dim=2)
    bottom = torch.zeros_like(top[:, :1])
    bottom[..., 3] = 1.0
    return torch.cat([top, bottom], dim=1)


def rigid_transforms(rotations: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """Per-joint 4x4 transforms relative to the rest pose, chained along the kinematic tree."""
    batch, count = joints.shape[:2]
    joints = joints[..., None]
    relative = joints.clone()
    relative[:, 1:] = relative[:, 1:] - joints[:, parents[1:]]
    local = _homogeneous(rotations.reshape(-1, 3, 3), relative.reshape(-1, 3, 1)).reshape(batch, count, 4, 4)
    chain = [local[:, 0]]
    for index in range(1, count):
        chain.append(torch.matmul(chain[parents[index]], local[:, index]))
    transforms = torch.stack(chain, dim=1)
    rest = torch.cat([joints, torch.zeros_like(joints[:, :, :1])], dim=2)
    offset = torch.matmul(transforms, rest)
    return transforms - torch.nn.functional.pad(offset, [3, 0])


def rotation_y_angle(rotation: torch.Tensor) -> torch.Tensor:
    """FLAME's `rot_mat_to_euler`: rotation about y from a rotation matrix."""
    sy = torch.sqrt(rotation[:, 0, 0] ** 2 + rotation[:, 1, 0] ** 2)
    return torch.atan2(-rotation[:, 2, 0], sy)


def barycentric_points(vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor,
                       bary: torch.Tensor) -> torch.Tensor:
    """Points on the mesh: per batch row, landmarks = sum of a face's vertices weighted by barycentrics."""
    corners = vertices[torch.arange(vertices.shape[0], device=vertices.device)[:, None, None], faces[face_idx]]
    return torch.einsum("blfi,blf->bli", corners, bary)


class Flame(nn.Module):
    """FLAME 2020 as DECA uses it: 100 shape, 50 expression, pose = global rotation (3) + jaw (3)."""

    def __init__(self, model: dict, landmarks: dict, n_shape: int = N_SHAPE, n_exp: int = N_EXP,
                 names: tuple[str, str] = ("generic_model.pkl", "landmark_embedding.npy")) -> None:
        """`model`/`landmarks` as read from the files named `names`; every array is checked (HeadFileError)."""
        super().__init__()
        arrays = _checked_model(model, n_shape, n_exp, names[0])
        self.register_buffer("faces", torch.from_numpy(arrays["f"]))
        self.register_buffer("v_template", torch.from_numpy(arrays["v_template"]))
        shapedirs = torch.from_numpy(arrays["shapedirs"])
        self.register_buffer("shapedirs", torch.cat([shapedirs[:, :, :n_shape], shapedirs[:, :, 300:300 + n_exp]], 2))
        posedirs = arrays["posedirs"]
        self.register_buffer("posedirs", torch.from_numpy(posedirs.reshape(-1, posedirs.shape[-1]).T.copy()))
        self.register_buffer("j_regressor", torch.from_numpy(arrays["J_regressor"]))
        self.parents = [int(p) for p in arrays["parents"]]
        self.register_buffer("lbs_weights", torch.from_numpy(arrays["weights"]))
        marks = _checked_landmarks(landmarks, len(arrays["f"]), names[1])
        self.register_buffer("static_lmk_faces", marks["static_lmk_faces_idx"])
        self.register_buffer("static_lmk_bary", marks["static_lmk_bary_coords"])
        self.register_buffer("dynamic_lmk_faces", marks["dynamic_lmk_faces_idx"])
        self.register_buffer("dynamic_lmk_bary", marks["dynamic_lmk_bary_coords"])
        self.register_buffer("full_lmk_faces", marks["full_lmk_faces_idx"])
        self.register_buffer("full_lmk_bary", marks["full_lmk_bary_coords"])
        chain, joint = [], NECK_JOINT
        while joint != -1:
            chain.append(joint)
            joint = self.parents[joint]
        self.neck_chain = chain

    @classmethod
    def from_files(cls, model_path: str | Path, landmark_path: str | Path) -> Flame:
        """generic_model.pkl (chumpy pickle, read without chumpy) + landmark_embedding.npy."""
        return cls(load_flame_model(model_path), load_landmark_embedding(landmark_path),
                   names=(Path(model_path).name, Path(landmark_path).name))

    def _contour(self, full_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 17 jaw-line landmarks follow the head's rotation about y (FLAME's lookup table)."""
        batch = full_pose.shape[0]
        rotations = rodrigues(full_pose.view(batch, -1, 3)[:, self.neck_chain].reshape(-1, 3))
        rotations = rotations.view(batch, -1, 3, 3)
        relative = torch.eye(3, device=full_pose.device, dtype=full_pose.dtype)[None].expand(batch, -1, -1)
        for index in range(len(self.neck_chain)):
            relative = torch.bmm(rotations[:, index], relative)
        angle = torch.round(torch.clamp(rotation_y_angle(relative) * 180.0 / np.pi, max=39)).long()
        negative = angle.lt(0).long()
        below = angle.lt(-39).long()
        angle = negative * (below * 78 + (1 - below) * (39 - angle)) + (1 - negative) * angle
        return self.dynamic_lmk_faces[angle], self.dynamic_lmk_bary[angle]

    def forward(self, shape: torch.Tensor, expression: torch.Tensor,
                pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(vertices, 68 2D-style landmarks with contour, 68 3D landmarks), all (B, N, 3) in FLAME space."""
        batch = shape.shape[0]
        zeros3 = pose.new_zeros(batch, 3)
        full_pose = torch.cat([pose[:, :3], zeros3, pose[:, 3:], pose.new_zeros(batch, 6)], dim=1)
        betas = torch.cat([shape, expression], dim=1)
        v_shaped = self.v_template[None] + torch.einsum("bl,mkl->bmk", betas, self.shapedirs)
        joints = torch.einsum("bik,ji->bjk", v_shaped, self.j_regressor)
        rotations = rodrigues(full_pose.view(-1, 3)).view(batch, -1, 3, 3)
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        pose_feature = (rotations[:, 1:] - eye).view(batch, -1)
        v_posed = v_shaped + torch.matmul(pose_feature, self.posedirs).view(batch, -1, 3)
        transforms = rigid_transforms(rotations, joints, self.parents)
        blend = torch.matmul(self.lbs_weights[None].expand(batch, -1, -1),
                             transforms.view(batch, len(self.parents), 16)).view(batch, -1, 4, 4)
        homogeneous = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], dim=2)
        vertices = torch.matmul(blend, homogeneous[..., None])[:, :, :3, 0]

        contour_faces, contour_bary = self._contour(full_pose)
        faces_idx = torch.cat([contour_faces, self.static_lmk_faces[None].expand(batch, -1)], 1)
        bary = torch.cat([contour_bary, self.static_lmk_bary[None].expand(batch, -1, -1)], 1)
        landmarks2d = barycentric_points(vertices, self.faces, faces_idx, bary)
        landmarks3d = barycentric_points(vertices, self.faces, self.full_lmk_faces.expand(batch, -1),
                                         self.full_lmk_bary.expand(batch, -1, -1))
        return vertices, landmarks2d, landmarks3d
