"""Parametric body models behind one interface: Anny (the default; NAVER's model ships in its wheel) and SMPL /
SMPL-X through the smplx package, from model files the user downloads under their licence.

Every model answers in the same terms, so fitting, rendering and noise code never branch on the model:
- model frame: metres, y up, z towards where the body faces, x towards the body's own left (SMPL's frame);
- `forward(shape, pose, global_orient, transl)`: `global_orient` (axis-angle) rotates the posed body about its
  root joint, then `transl` moves it;
- `joints_wholebody` [B, 133, 3] in the COCO-WholeBody layout of `humanim.schemas.keypoints`; `keypoint_mask`
  [133] says which rows the model defines (the other rows are zero);
- `face_part` [F] uint8: one of SMPL's 24 joint regions (`SMPL_PARTS`) per face. Champ's semantic map colours
  each SMPL vertex by its dominant skinning joint (argmax of the LBS weights, viridis of 10 x label on black),
  so we label every model's faces by the SMPL region that dominates their skinning weights.

What each model provides (`keypoint_mask`):
- Anny: body and feet (rows 0-22) from Anny's own COCO regressor (`anny.KeypointsRegressor.coco`, 23 points);
  hands (91-132) from its hand bones: the wrist from the same regressor, the three joints of each finger at
  bone heads, the tip at the vertex of the last phalanx furthest along it. Anny has no face landmarks: rows
  23-90 are missing.
- SMPL-X: all 133 rows: joints from its kinematic tree, face landmarks from the model file's barycentric
  embeddings (51 static + 17 contour points that follow the head's rotation), nose, eyes, ears, toes, heels
  and fingertips at smplx's vertex ids.
- SMPL: body, feet, hand wrists and fingertips; no face landmarks, no finger joints.
"""
from __future__ import annotations

import importlib
import os
import pickle
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from humanim.schemas.keypoints import BODY_NAMES, FACE, FEET_NAMES, KEYPOINT_NAMES, NUM_KEYPOINTS

FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")  # schemas.keypoints' order
WHOLEBODY_INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# SMPL's 24 joints; a face's part is the joint whose region dominates its skinning weights.
SMPL_PARTS = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
PART_INDEX = {name: i for i, name in enumerate(SMPL_PARTS)}

SMPL_URL = "https://smpl.is.tue.mpg.de"
SMPLX_URL = "https://smpl-x.is.tue.mpg.de"


class BodyModelFileNotFound(FileNotFoundError):
    """An SMPL / SMPL-X model file that is not where it was looked for."""


@dataclass
class BodyOutput:
    vertices: torch.Tensor  # [B, V, 3] metres, model frame
    joints_wholebody: torch.Tensor  # [B, 133, 3] metres, model frame; rows outside keypoint_mask are 0
    keypoint_mask: np.ndarray  # [133] bool
    faces: np.ndarray  # [F, 3] int32
    face_part: np.ndarray  # [F] uint8, index into SMPL_PARTS


class BodyModel(ABC):
    """A body model in the shared conventions (see the module docstring)."""

    kind: str
    faces: np.ndarray  # [F, 3] int32
    face_part: np.ndarray  # [F] uint8
    keypoint_mask: np.ndarray  # [133] bool
    shape_names: tuple[str, ...]  # what each column of `shape` means
    pose_joints: tuple[str, ...]  # the joints `pose` rotates, in its order (the root is `global_orient`)
    device: torch.device

    @abstractmethod
    def forward(self, shape: torch.Tensor, pose: torch.Tensor, global_orient: torch.Tensor,
                transl: torch.Tensor) -> BodyOutput:
        """shape [B or 1, S]; pose [B, J, 3] axis-angle per `pose_joints`; global_orient [B, 3]; transl [B, 3]."""

    @abstractmethod
    def keypoints_only(self, shape: torch.Tensor, pose: torch.Tensor, global_orient: torch.Tensor,
                       transl: torch.Tensor) -> torch.Tensor:
        """`forward(...).joints_wholebody`, computed without posing the whole mesh where the model allows it."""

    def keypoint_jacobian(self, shape: torch.Tensor, pose: torch.Tensor, global_orient: torch.Tensor,
                          transl: torch.Tensor, joints: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`keypoints_only(...)` [B, 133, 3] with its derivatives for Gauss-Newton fitting, for the K keypoints
        the model defines (the rows of keypoint_mask, in order): with respect to the axis-angle of the pose joints
        `joints`, [B, K, len(joints), 3 (keypoint axis), 3 (pose axis)], and of global_orient, [B, K, 3, 3]; with
        respect to transl it is the identity. This default takes forward differences, all in one batch."""
        step = 1e-3
        batch, probes = pose.shape[0], 3 * len(joints) + 3
        with torch.no_grad():
            base = self.keypoints_only(shape, pose, global_orient, transl)
            poses = pose.repeat_interleave(probes + 1, 0).reshape(batch, probes + 1, -1, 3).clone()
            orients = global_orient.repeat_interleave(probes + 1, 0).reshape(batch, probes + 1, 3).clone()
            for n, joint in enumerate(joints):
                for axis in range(3):
                    poses[:, 1 + 3 * n + axis, joint, axis] += step
            for axis in range(3):
                orients[:, probes - 2 + axis, axis] += step
            moved = self.keypoints_only(shape if shape.shape[0] == 1 else shape.repeat_interleave(probes + 1, 0),
                                        poses.flatten(0, 1), orients.flatten(0, 1),
                                        transl.repeat_interleave(probes + 1, 0))
            change = (moved.reshape(batch, probes + 1, -1, 3)[:, 1:] - base[:, None]) / step  # [B, P, 133, 3]
            change = change[:, :, self.keypoint_mask].permute(0, 2, 3, 1)  # [B, K, 3, P]
        pose_jacobian = change[..., :-3].reshape(batch, -1, 3, len(joints), 3).transpose(2, 3)
        return base, pose_jacobian, change[..., -3:]

    def __call__(self, shape, pose, global_orient, transl) -> BodyOutput:
        return self.forward(shape, pose, global_orient, transl)

    def _mask_tensor(self) -> torch.Tensor:
        """[1, 133, 1]: zeroes the rows the model does not define (transl would otherwise move them)."""
        return torch.as_tensor(self.keypoint_mask, device=self.device)[None, :, None]


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """[..., 3] axis-angle -> [..., 3, 3] rotation (Rodrigues), differentiable at zero."""
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)
    # sin(a)/a and (1-cos(a))/a^2 by their Taylor series near 0, so the gradient at the rest pose is exact.
    small = angle < 1e-4
    safe = torch.where(small, torch.ones_like(angle), angle)
    sin_term = torch.where(small, 1 - angle**2 / 6, torch.sin(safe) / safe)
    cos_term = torch.where(small, 0.5 - angle**2 / 24, (1 - torch.cos(safe)) / safe**2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(axis_angle.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin_term[..., None] * cross + cos_term[..., None] * (cross @ cross)


def _skew(vector: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> [..., 3, 3] with _skew(a) @ b = a x b."""
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(vector.shape + (3,))


def _right_jacobian(axis_angle: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> [..., 3, 3]: exp(a + da) = exp(a) exp(J_r(a) da) to first order (J_r(-a) is the left one)."""
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)[..., None]
    small = angle < 1e-4
    safe = torch.where(small, torch.ones_like(angle), angle)
    first = torch.where(small, 0.5 - angle**2 / 24, (1 - torch.cos(safe)) / safe**2)
    second = torch.where(small, 1 / 6 - angle**2 / 120, (safe - torch.sin(safe)) / safe**3)
    cross = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye - first * cross + second * (cross @ cross)


def _rigid(points: torch.Tensor, global_orient: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """Rotate [B, N, 3] points about the origin by global_orient [B, 3], then add transl [B, 3]."""
    rotation = axis_angle_to_matrix(global_orient)
    return points @ rotation.transpose(-1, -2) + transl[:, None]


def _require(module: str, install: str):
    """Import an optional body-model package, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"this body model needs {module!r}: {install}", name=module) from error


def _face_parts(faces: np.ndarray, vertex_part_weights: np.ndarray) -> np.ndarray:
    """Per face, the part with the largest summed skinning weight over its three vertices."""
    return vertex_part_weights[faces].sum(axis=1).argmax(axis=1).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------- Anny

# Anny is z up and faces -y; this rotation takes its frame to the shared one (y up, facing +z, x to the left).
ANNY_TO_MODEL = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def anny_bone_part(bone: str) -> int:
    """The SMPL region Anny's bone drives. The spine split follows where each bone's skin lies: spine05 skins the
    hips, spine04 the lower belly, spine03 the upper belly, spine02 and spine01 the chest."""
    side = {".L": "left_", ".R": "right_"}.get(bone[-2:], "")
    stem = bone[:-2] if side else bone
    centre = {"root": "pelvis", "spine05": "pelvis", "spine04": "spine1", "spine03": "spine2", "spine02": "spine3",
              "spine01": "spine3", "head": "head"}
    if stem in centre:
        return PART_INDEX[centre[stem]]
    by_prefix = (("neck", "neck"), ("eye", "head"), ("pelvis", "pelvis"), ("upperleg", "hip"), ("lowerleg", "knee"),
                 ("foot", "ankle"), ("toe", "foot"), ("clavicle", "collar"), ("shoulder", "shoulder"),
                 ("upperarm", "shoulder"), ("lowerarm", "elbow"), ("wrist", "wrist"), ("metacarpal", "wrist"),
                 ("finger1-1", "wrist"), ("finger", "hand"))  # the thumb's first bone is its metacarpal: palm
    for prefix, part in by_prefix:
        if stem.startswith(prefix):
            return PART_INDEX[part if part in ("pelvis", "neck", "head") else side + part]
    raise ValueError(f"no SMPL part for Anny bone {bone!r}")


class AnnyBodyModel(BodyModel):
    """Anny with its default rig and topology (13718 vertices, 104 bones) and its 6 default phenotypes as shape.

    Posing: `pose` holds an axis-angle rotation per non-root bone in Anny's 'local-ref' parametrisation (each
    bone's rotation relative to its parent, about axes parallel to the model frame's). The root bone stays at its
    rest pose; `global_orient` and `transl` then move the whole body, which keeps the root joint at the origin
    when both are zero.

    `keypoints_only`: skinning and the keypoint regressor are both linear, so a keypoint regressed from skinned
    vertices, sum_v r_kv sum_j a_vj T_j x_v, equals sum_j T_j m_kj with m_kj = sum_v r_kv a_vj x_v. Those m_kj
    come from the rest vertices with one sparse product, and the bone transforms T_j from the kinematic chain:
    the whole mesh is never skinned. The chain is Anny's 'local-ref' one written on 3x3 rotations instead of 4x4
    transforms and only over the bones the keypoints depend on (eyes and a few others drop out): in that
    parametrisation each bone's world-aligned rotation is G_c = G_p D_c and its head w_c = w_p + G_p o_c, with
    o_c the rest offset from its parent's head carried into the parent's reference orientation. A fitter calls
    this hundreds of times per clip; forward and backward, it takes about half the time of Anny's own chain.
    """

    kind = "anny"

    def __init__(self, device: str | torch.device = "cpu"):
        anny = _require("anny", "pip install anny")  # heavy: only when the model is used
        self.device = torch.device(device)
        model = anny.Anny().to(device=self.device, dtype=torch.float32)
        model.requires_grad_(False)
        self.model = model
        self.bone_labels: list[str] = list(model.bone_labels)
        self.shape_names = tuple(model.phenotype_labels)
        self.pose_joints = tuple(self.bone_labels[1:])
        self.faces = model.faces.cpu().numpy().astype(np.int32)
        self.frame_rotation = ANNY_TO_MODEL.to(self.device)

        bone_weights = model.vertex_bone_weights  # [V, 9]
        bone_indices = model.vertex_bone_indices.long()  # [V, 9]
        num_vertices = bone_weights.shape[0]
        bone_part = torch.tensor([anny_bone_part(b) for b in self.bone_labels], device=self.device)
        part_weights = torch.zeros(num_vertices, len(SMPL_PARTS), device=self.device)
        part_weights.scatter_add_(1, bone_part[bone_indices], bone_weights)
        self.face_part = _face_parts(self.faces, part_weights.cpu().numpy())

        average_shape = torch.full((1, len(self.shape_names)), 0.5, device=self.device)
        rest = model.get_rest_model(self._blendshape_coefficients(average_shape))
        regressor = anny.KeypointsRegressor.coco(model, labels=list(BODY_NAMES + FEET_NAMES))
        # Vertex-regressed keypoints: COCO body and feet (rows 0-22), then the ten fingertips.
        self.vertex_slots = list(range(23))
        rows = [regressor.regression_weights]
        self.head_slots, self.head_bones = [], []
        for side, suffix in (("left", ".L"), ("right", ".R")):
            for n, finger in enumerate(FINGERS, start=1):
                for k in range(1, 4):
                    self.head_slots.append(WHOLEBODY_INDEX[f"{side}_hand_{finger}{k}"])
                    self.head_bones.append(self.bone_labels.index(f"finger{n}-{k}{suffix}"))
                tip = self._fingertip_vertex(rest, bone_weights, bone_indices, n, suffix)
                rows.append(torch.nn.functional.one_hot(torch.tensor([tip]), num_vertices).to(rows[0]))
                self.vertex_slots.append(WHOLEBODY_INDEX[f"{side}_hand_{finger}4"])
        self.regressor = torch.cat(rows)  # [K, V]
        self.wrist_copies = [(WHOLEBODY_INDEX["left_hand_root"], WHOLEBODY_INDEX["left_wrist"]),
                             (WHOLEBODY_INDEX["right_hand_root"], WHOLEBODY_INDEX["right_wrist"])]
        self.keypoint_mask = np.zeros(NUM_KEYPOINTS, dtype=bool)
        self.keypoint_mask[self.vertex_slots + self.head_slots + [slot for slot, _ in self.wrist_copies]] = True
        # For each defined row in order, where keypoint_jacobian finds it among vertex_slots + head_slots.
        computed = {slot: i for i, slot in enumerate(self.vertex_slots + self.head_slots)}
        computed.update({slot: computed[source] for slot, source in self.wrist_copies})
        self.defined_row_sources = torch.tensor([computed[r] for r in np.flatnonzero(self.keypoint_mask)],
                                                device=self.device)

        # C[(k, j), v] = r_kv a_vj: the regressor pushed through the skinning weights, sparse.
        num_bones = len(self.bone_labels)
        k_index, v_index = self.regressor.nonzero(as_tuple=True)
        weight = self.regressor[k_index, v_index][:, None] * bone_weights[v_index]  # [nnz, 9]
        row = k_index[:, None] * num_bones + bone_indices[v_index]
        keep = weight != 0
        self.bone_regressor = torch.sparse_coo_tensor(
            torch.stack([row[keep], v_index[:, None].expand_as(row)[keep]]), weight[keep],
            (len(self.vertex_slots) * num_bones, num_vertices), check_invariants=True).coalesce()
        self._prune_chain(row[keep] % num_bones)

    def _prune_chain(self, moment_bones: torch.Tensor) -> None:
        """The bones keypoints_only needs (those with a moment, the finger joints, and their ancestors) in depth
        levels, each bone's parent given by its position in the level before."""
        parents = [int(p) for p in self.model.bone_parents]
        needed = set(moment_bones.unique().tolist()) | set(self.head_bones) | {0}
        for bone in list(needed):
            while bone > 0:
                bone = parents[bone]
                needed.add(bone)

        def depth(bone: int) -> int:
            return 0 if bone == 0 else 1 + depth(parents[bone])

        by_level: list[list[int]] = [[] for _ in range(1 + max(depth(b) for b in needed))]
        for bone in sorted(needed):
            by_level[depth(bone)].append(bone)
        self.chain_levels = [torch.tensor(level, device=self.device) for level in by_level]
        self.chain_parent_slots = [  # per level after the root's
            torch.tensor([by_level[d - 1].index(parents[b]) for b in level], device=self.device)
            for d, level in enumerate(by_level) if d > 0]
        self.chain_bones = torch.cat(self.chain_levels)  # depth order
        position = {int(b): i for i, b in enumerate(self.chain_bones)}
        self.chain_head_positions = [position[b] for b in self.head_bones]
        self.chain_bone_parents = torch.tensor([parents[b] if b else 0 for b in self.chain_bones.tolist()],
                                               device=self.device)
        self.chain_parent_positions = torch.tensor([position[int(p)] for p in self.chain_bone_parents],
                                                   device=self.device)
        # chain_below[i, n]: whether chain bone n is bone i or below it.
        below = torch.eye(len(self.chain_bones), device=self.device)
        for n in range(len(self.chain_bones) - 1, 0, -1):  # depth order: children come after parents
            below[self.chain_parent_positions[n]] += below[n]
        self.chain_below = below.clamp(max=1)

    def _fingertip_vertex(self, rest: dict, bone_weights: torch.Tensor, bone_indices: torch.Tensor, finger: int,
                          suffix: str) -> int:
        """The vertex that the last phalanx dominates, furthest along the direction of that phalanx."""
        last, middle = (self.bone_labels.index(f"finger{finger}-{k}{suffix}") for k in (3, 2))
        heads = rest["rest_bone_heads"][0]
        direction = heads[last] - heads[middle]
        dominant = bone_indices.gather(1, bone_weights.argmax(1, keepdim=True))[:, 0]
        candidates = (dominant == last).nonzero()[:, 0]
        reach = (rest["rest_vertices"][0, candidates] - heads[last]) @ direction
        return int(candidates[reach.argmax()])

    def _blendshape_coefficients(self, shape: torch.Tensor) -> torch.Tensor:
        # Anny.forward does this too; we call the same private step so that we can skip skinning in keypoints_only.
        empty = shape.new_zeros(shape.shape[0], 0)
        return self.model._get_phenotype_blendshape_coefficients(shape, empty, empty)

    def _bone_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Rest model, then the skinning transforms T [B, J, 4, 4] and posed bone poses W [B, J, 4, 4] (Anny frame)."""
        batch = pose.shape[0]
        rest = self.model.get_rest_model(self._blendshape_coefficients(shape))
        # A rotation about model-frame axes, expressed about Anny's axes: C^T R C, i.e. the axis rotated by C^T.
        rotations = axis_angle_to_matrix(pose @ self.frame_rotation)
        deltas = torch.eye(4, device=self.device).repeat(batch, len(self.bone_labels), 1, 1)
        deltas[:, 1:, :3, :3] = rotations
        transforms, bone_poses = self.model.get_bone_transforms(deltas, rest["rest_bone_poses"])
        return rest, transforms, bone_poses

    def _to_model_frame(self, points: torch.Tensor, global_orient: torch.Tensor, transl: torch.Tensor):
        return _rigid(points @ self.frame_rotation.T, global_orient, transl)

    def _assemble(self, vertex_keypoints: torch.Tensor, bone_poses: torch.Tensor) -> torch.Tensor:
        keypoints = vertex_keypoints.new_zeros(vertex_keypoints.shape[0], NUM_KEYPOINTS, 3)
        keypoints[:, self.vertex_slots] = vertex_keypoints
        keypoints[:, self.head_slots] = bone_poses[:, self.head_bones, :3, 3]
        for slot, source in self.wrist_copies:
            keypoints[:, slot] = keypoints[:, source]
        return keypoints

    def forward(self, shape, pose, global_orient, transl) -> BodyOutput:
        rest, transforms, bone_poses = self._bone_transforms(shape, pose)
        rest_vertices = rest["rest_vertices"].expand(pose.shape[0], -1, -1)
        vertices = self.model.get_skinned_vertices(rest_vertices, transforms)
        keypoints = self._assemble(torch.einsum("kv,bvc->bkc", self.regressor, vertices), bone_poses)
        return BodyOutput(
            vertices=self._to_model_frame(vertices, global_orient, transl),
            joints_wholebody=self._to_model_frame(keypoints, global_orient, transl) * self._mask_tensor(),
            keypoint_mask=self.keypoint_mask, faces=self.faces, face_part=self.face_part,
        )

    def _posed_chain(self, shape: torch.Tensor, pose: torch.Tensor):
        """Over the pruned chain (depth order): posed world-aligned rotations G [B, N, 3, 3] and heads w [B, N, 3]
        in Anny's frame, and the moments folded for them, lever [S, K, N, 3] and weight [S, K, N], such that
        vertex keypoint k is sum_j G_j lever_kj + weight_kj w_j."""
        rest = self.model.get_rest_model(self._blendshape_coefficients(shape))
        bones, parents = self.chain_bones, self.chain_bone_parents
        rest_rotation = rest["rest_bone_poses"][:, bones, :3, :3]  # [S, N, 3, 3], S = 1 or B
        heads = rest["rest_bone_poses"][:, :, :3, 3]
        reference = self.model.reference_bone_orientations[bones]  # U_c
        # A_c = U_c R_c^T turns a bone from its rest to its reference orientation (the root's offsets use I).
        to_reference = reference @ rest_rotation.transpose(-1, -2)
        eye = torch.eye(3, device=self.device).expand(to_reference.shape[0], 1, 3, 3)
        offset_rotation = torch.cat([eye, to_reference[:, 1:]], 1)[:, self.chain_parent_positions]
        offsets = (offset_rotation @ (heads[:, bones] - heads[:, parents])[..., None])[..., 0]  # o_c

        # Moments m_kj = [a_kj, b_kj] of the needed bones; T_c = [G_c A_c | w_c - G_c A_c h_c] folds into them.
        homogeneous = torch.cat([rest["rest_vertices"], torch.ones_like(rest["rest_vertices"][..., :1])], -1)
        columns = homogeneous.permute(1, 0, 2).reshape(homogeneous.shape[1], -1)
        moments = (self.bone_regressor @ columns).reshape(len(self.vertex_slots), len(self.bone_labels), -1, 4)
        moments = moments[:, bones].permute(2, 0, 1, 3)  # [S, K, N, 4]
        weight = moments[..., 3]
        about_head = moments[..., :3] - heads[:, None, bones] * weight[..., None]
        lever = (to_reference[:, None] @ about_head[..., None])[..., 0]

        batch = pose.shape[0]
        # A rotation about model-frame axes, expressed about Anny's axes (see _bone_transforms).
        deltas = axis_angle_to_matrix(pose[:, bones[1:] - 1] @ self.frame_rotation)
        rotations = [reference[0].T.expand(batch, 1, 3, 3)]  # G_0 = U_0^T: the root stays at its rest pose
        posed = [heads.new_zeros(batch, 1, 3)]
        first = 1
        for level, parent_slots in zip(self.chain_levels[1:], self.chain_parent_slots):
            last = first + len(level)
            parent_rotation = rotations[-1][:, parent_slots]
            rotations.append(parent_rotation @ deltas[:, first - 1:last - 1])
            posed.append(posed[-1][:, parent_slots] + (parent_rotation @ offsets[:, first:last, :, None])[..., 0])
            first = last
        return torch.cat(rotations, 1), torch.cat(posed, 1), lever, weight

    def _keypoints_from_chain(self, rotation, posed_heads, lever, weight) -> torch.Tensor:
        """[B, 133, 3] in Anny's frame."""
        batch = rotation.shape[0]
        if lever.shape[0] == 1:
            vertex_keypoints = (torch.einsum("bjrc,kjc->bkr", rotation, lever[0])
                                + torch.einsum("bjr,kj->bkr", posed_heads, weight[0]))
        else:
            vertex_keypoints = (torch.einsum("bjrc,bkjc->bkr", rotation, lever)
                                + torch.einsum("bjr,bkj->bkr", posed_heads, weight))
        keypoints = vertex_keypoints.new_zeros(batch, NUM_KEYPOINTS, 3)
        keypoints[:, self.vertex_slots] = vertex_keypoints
        keypoints[:, self.head_slots] = posed_heads[:, self.chain_head_positions]
        for slot, source in self.wrist_copies:
            keypoints[:, slot] = keypoints[:, source]
        return keypoints

    def keypoints_only(self, shape, pose, global_orient, transl) -> torch.Tensor:
        keypoints = self._keypoints_from_chain(*self._posed_chain(shape, pose))
        return self._to_model_frame(keypoints, global_orient, transl) * self._mask_tensor()

    def keypoint_jacobian(self, shape, pose, global_orient, transl, joints):
        """Closed form. Turning bone j by a small world-aligned rotation w about its head moves every bone below it
        rigidly, so keypoint k moves by w x c_kj, with c_kj = sum over bones b below j (j included) of
        G_b lever_kb + weight_kb (w_b - w_j) for a regressed keypoint, or w_b - w_j for a keypoint at a bone
        head. A change of pose[j] turns bone j by G_j J_r(a_j) (SO(3)'s right Jacobian) in world axes."""
        with torch.no_grad():
            rotation, posed_heads, lever, weight = self._posed_chain(shape, pose)
            keypoints = self._keypoints_from_chain(rotation, posed_heads, lever, weight)
            batch = pose.shape[0]
            # A joint outside the pruned chain moves no keypoint: its row of `below` is empty.
            chain_position = {int(b): i for i, b in enumerate(self.chain_bones)}
            positions = torch.tensor([chain_position.get(j + 1, 0) for j in joints], device=self.device)
            in_chain = torch.tensor([j + 1 in chain_position for j in joints], device=self.device)
            below = self.chain_below[positions] * in_chain[:, None]  # [P, N]
            # Per keypoint and chosen bone, c_kj in Anny's frame: regressed keypoints, then bone-head keypoints.
            if lever.shape[0] == 1:  # one shape for the batch: one matrix product per bone
                contribution = torch.einsum("bnrc,knc->bknr", rotation, lever[0])
            else:
                contribution = torch.einsum("bnrc,bknc->bknr", rotation, lever)
            contribution = contribution + weight[..., None] * posed_heads[:, None]  # [B, K, N, 3]
            summed = (contribution.transpose(2, 3) @ below.T).transpose(2, 3)  # [B, K, P, 3]
            summed = summed - (weight @ below.T)[..., None] * posed_heads[:, None, positions]
            heads = posed_heads[:, self.chain_head_positions]  # [B, H, 3]
            head_below = below[:, self.chain_head_positions].T  # [H, P]
            head_levers = (heads[:, :, None] - posed_heads[:, None, positions]) * head_below[None, ..., None]
            # d keypoint = w x c, w = G_j J_r(a_j) F^T d pose_j in Anny's frame; in the output frame (rotation R)
            # that is (R w) x (R c): column m of the Jacobian is (R G_j J_r F^T)[:, m] x (R c).
            frame = self.frame_rotation
            to_output = axis_angle_to_matrix(global_orient) @ frame  # Anny frame -> output frame, [B, 3, 3]
            turn = to_output[:, None] @ rotation[:, positions] @ _right_jacobian(pose[:, joints] @ frame) @ frame.T
            levers = torch.cat([summed, head_levers], 1) @ to_output.transpose(1, 2)[:, None]  # [B, K + H, P, 3]
            defined = torch.linalg.cross(turn.transpose(-1, -2)[:, None], levers[..., None, :]).transpose(-1, -2)
            pose_jacobian = defined[:, self.defined_row_sources]
            posed = self._to_model_frame(keypoints, global_orient, transl) * self._mask_tensor()
            relative = posed[:, self.keypoint_mask] - transl[:, None]
            orient_jacobian = -_skew(relative) @ _right_jacobian(-global_orient)[:, None]
        return posed, pose_jacobian, orient_jacobian


# --------------------------------------------------------------------------------------------------- SMPL, SMPL-X

SMPL_PART_OF_SMPLX_JOINT = (
    # SMPL-X joints 0-21 are SMPL's; jaw and eyes belong to the head, each hand's 15 finger joints to SMPL's hand.
    tuple(range(22)) + (PART_INDEX["head"],) * 3 + (PART_INDEX["left_hand"],) * 15 + (PART_INDEX["right_hand"],) * 15
)
# smplx's joint order for each hand's fingers (index, middle, pinky, ring, thumb), mapped to COCO-WholeBody's.
SMPLX_FINGER_ORDER = ("forefinger", "middle_finger", "pinky_finger", "ring_finger", "thumb")
SMPLX_TIP_NAMES = {"thumb": "thumb", "forefinger": "index", "middle_finger": "middle", "ring_finger": "ring",
                   "pinky_finger": "pinky"}
VERTEX_ID_KEYPOINTS = {  # COCO-WholeBody name -> key in smplx.vertex_ids
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_big_toe": "LBigToe", "left_small_toe": "LSmallToe", "left_heel": "LHeel",
    "right_big_toe": "RBigToe", "right_small_toe": "RSmallToe", "right_heel": "RHeel",
    **{f"{side}_hand_{finger}4": f"{side[0]}{tip}"
       for side in ("left", "right") for finger, tip in SMPLX_TIP_NAMES.items()},
}
BODY_JOINTS = {  # COCO-WholeBody name -> SMPL / SMPL-X joint index (the first 22 joints agree)
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19, "left_wrist": 20,
    "right_wrist": 21, "left_hip": 1, "right_hip": 2, "left_knee": 4, "right_knee": 5, "left_ankle": 7,
    "right_ankle": 8, "left_hand_root": 20, "right_hand_root": 21,
}
SMPL_FAMILY = {
    # kind: (official vertex count, vertex-id table in smplx, file names looked for, where to get them)
    "smpl": (6890, "smplh", ("SMPL_NEUTRAL.pkl", "smpl/SMPL_NEUTRAL.pkl"), SMPL_URL),
    "smplx": (10475, "smplx", ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl", "smplx/SMPLX_NEUTRAL.npz",
                               "smplx/SMPLX_NEUTRAL.pkl"), SMPLX_URL),
}


def user_model_dirs() -> list[Path]:
    """Where model files are looked for when no path is given: $HUMANIM_MODELS, then the user cache."""
    dirs = [Path(os.environ["HUMANIM_MODELS"])] if os.environ.get("HUMANIM_MODELS") else []
    return dirs + [Path.home() / ".cache" / "humanim" / "models"]


def find_model_file(kind: str, model_path: str | os.PathLike | None) -> Path:
    """The SMPL / SMPL-X file to load: `model_path` itself, a known file name in it, or in `user_model_dirs()`."""
    _, _, names, url = SMPL_FAMILY[kind]
    if model_path is not None and not Path(model_path).is_dir():
        tried = [Path(model_path)]
    else:
        dirs = [Path(model_path)] if model_path is not None else user_model_dirs()
        tried = [d / name for d in dirs for name in names]
    for path in tried:
        if path.is_file():
            return path
    raise BodyModelFileNotFound(
        f"No {kind.upper()} model file. Looked for: {', '.join(map(str, tried))}. "
        f"{kind.upper()} files cannot be redistributed: register at {url}, accept its licence, download the model "
        f"({names[0]} or a gendered variant) and pass its path, or put it in $HUMANIM_MODELS."
    )


class SmplFamilyBodyModel(BodyModel):
    """SMPL or SMPL-X loaded by smplx from a user's file, posed with smplx's own LBS.

    `shape` holds the first betas (10); SMPL-X expressions stay at zero and its hands are flat at zero pose (no
    PCA, no mean hand pose). `pose` is the axis-angle of every joint but the pelvis, in smplx's order: SMPL 23
    body joints; SMPL-X 21 body joints, jaw, left eye, right eye, 15 left-hand and 15 right-hand joints.
    Keypoints at smplx's vertex ids are only defined on the official topology: a file with another vertex count
    (a custom or test mesh) leaves them out of `keypoint_mask`.
    """

    def __init__(self, kind: str, model_file: Path, device: str | torch.device = "cpu", num_betas: int = 10):
        smplx = _require("smplx", "pip install smplx")
        from smplx.joint_names import JOINT_NAMES
        from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

        self.kind, self.device = kind, torch.device(device)
        try:
            if kind == "smpl":
                layer = smplx.SMPL(model_path=str(model_file), num_betas=num_betas)
            else:
                layer = smplx.SMPLX(model_path=str(model_file), ext=model_file.suffix[1:], num_betas=num_betas,
                                    num_expression_coeffs=10, use_pca=False,
                                    use_face_contour=True)
        except ModuleNotFoundError as error:  # SMPL pickles hold scipy matrices, the original ones chumpy objects
            hint = ("remove its chumpy objects with smplx's tools/clean_ch.py "
                    "(https://github.com/vchoutas/smplx/tree/main/tools)" if error.name == "chumpy"
                    else f"pip install {error.name}")
            raise ModuleNotFoundError(f"{model_file} needs the {error.name!r} package to unpickle: {hint}",
                                      name=error.name) from error
        except (pickle.UnpicklingError, AttributeError, KeyError, ValueError, OSError) as error:
            raise ValueError(f"{model_file} is not a readable {kind.upper()} model file: {error}") from error
        self.layer = layer.to(self.device).requires_grad_(False)
        self.faces = np.asarray(layer.faces, dtype=np.int32)
        # smplx's JOINT_NAMES are SMPL-X's; SMPL's last two joints are its hands.
        self.pose_joints = SMPL_PARTS[1:] if kind == "smpl" else tuple(JOINT_NAMES[1:layer.J_regressor.shape[0]])
        self.shape_names = tuple(f"beta{i}" for i in range(layer.num_betas))

        part_of_joint = np.array(range(24) if kind == "smpl" else SMPL_PART_OF_SMPLX_JOINT)
        joint_weights = layer.lbs_weights.cpu().numpy()
        part_weights = np.zeros((joint_weights.shape[0], len(SMPL_PARTS)), dtype=np.float32)
        np.add.at(part_weights.T, part_of_joint, joint_weights.T)
        self.face_part = _face_parts(self.faces, part_weights)

        joint_slots = dict(BODY_JOINTS)
        if kind == "smplx":
            for side, first in (("left", 25), ("right", 40)):
                for n, finger in enumerate(SMPLX_FINGER_ORDER):
                    for k in range(3):
                        joint_slots[f"{side}_hand_{finger}{k + 1}"] = first + 3 * n + k
        self.joint_slots = [WHOLEBODY_INDEX[name] for name in joint_slots]
        self.joint_sources = list(joint_slots.values())

        official_count, table, _, _ = SMPL_FAMILY[kind]
        if layer.v_template.shape[0] == official_count:
            ids = smplx_vertex_ids[table]
            self.vertex_slots = [WHOLEBODY_INDEX[name] for name in VERTEX_ID_KEYPOINTS]
            self.vertex_sources = [ids[key] for key in VERTEX_ID_KEYPOINTS.values()]
        else:
            warnings.warn(f"{model_file} has {layer.v_template.shape[0]} vertices, not {kind.upper()}'s "
                          f"{official_count}: keypoints at smplx's vertex ids are left out", stacklevel=2)
            self.vertex_slots, self.vertex_sources = [], []

        self.keypoint_mask = np.zeros(NUM_KEYPOINTS, dtype=bool)
        self.keypoint_mask[self.joint_slots + self.vertex_slots] = True
        if kind == "smplx":
            self.keypoint_mask[FACE] = True

    def forward(self, shape, pose, global_orient, transl) -> BodyOutput:
        from smplx.lbs import find_dynamic_lmk_idx_and_bcoords, lbs, vertices2landmarks

        layer, batch = self.layer, pose.shape[0]
        full_pose = torch.cat([global_orient[:, None], pose], 1).reshape(batch, -1)
        betas = shape.expand(batch, -1)
        shapedirs = layer.shapedirs
        if self.kind == "smplx":
            betas = torch.cat([betas, betas.new_zeros(batch, layer.expr_dirs.shape[-1])], -1)
            shapedirs = torch.cat([shapedirs, layer.expr_dirs], -1)
        vertices, joints = lbs(betas, full_pose, layer.v_template, shapedirs, layer.posedirs, layer.J_regressor,
                               layer.parents, layer.lbs_weights, pose2rot=True)

        keypoints = vertices.new_zeros(batch, NUM_KEYPOINTS, 3)
        keypoints[:, self.joint_slots] = joints[:, self.joint_sources]
        keypoints[:, self.vertex_slots] = vertices[:, self.vertex_sources]
        if self.kind == "smplx":
            faces = layer.faces_tensor
            contour_faces, contour_bary = find_dynamic_lmk_idx_and_bcoords(
                vertices, full_pose, layer.dynamic_lmk_faces_idx, layer.dynamic_lmk_bary_coords,
                layer.neck_kin_chain, pose2rot=True)
            # iBUG order: the 17 contour points first, then brows, nose, eyes and mouth (smplx's static 51).
            face_idx = torch.cat([contour_faces, layer.lmk_faces_idx.expand(batch, -1)], 1)
            face_bary = torch.cat([contour_bary, layer.lmk_bary_coords.expand(batch, -1, -1)], 1)
            keypoints[:, FACE] = vertices2landmarks(vertices, faces, face_idx, face_bary)
        offset = transl[:, None]
        return BodyOutput(vertices=vertices + offset,
                          joints_wholebody=(keypoints + offset) * self._mask_tensor(),
                          keypoint_mask=self.keypoint_mask, faces=self.faces, face_part=self.face_part)

    def keypoints_only(self, shape, pose, global_orient, transl) -> torch.Tensor:
        # No shortcut: pose-corrective blend shapes move the keypoint vertices, and smplx poses the whole mesh.
        return self.forward(shape, pose, global_orient, transl).joints_wholebody


def load_body_model(kind: str, model_path: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> BodyModel:
    """kind: "anny" (ships in its wheel; no path), "smpl" or "smplx" (a model file, or a folder holding one)."""
    if kind == "anny":
        if model_path is not None:
            raise ValueError("Anny ships its model in its wheel: model_path must be None")
        return AnnyBodyModel(device)
    if kind in SMPL_FAMILY:
        return SmplFamilyBodyModel(kind, find_model_file(kind, model_path), device)
    raise ValueError(f"unknown body model {kind!r}: expected 'anny', 'smpl' or 'smplx'")


# ------------------------------------------------------------------------------------- joint ranges, relaxed pose

@dataclass
class PosePrior:
    """What a plausible body looks like, for fitting priors and synthetic motion.

    Each joint's rotation is read in its own anatomical axes: `local = axes[j].T @ pose[j]` (the axis-angle's
    components along those axes), and `lower <= local <= upper` is the joint's range. Ranges are measured from the
    model's rest pose (Anny: arms down at about 50 degrees with elbows bent; SMPL: T-pose). A joint with a range of
    zero width on all three axes is `locked`: a twist, toe, eye or metacarpal bone that keypoints cannot see.
    Shape is a box too, with a mean and a spread for a prior toward the mean.
    """

    axes: torch.Tensor  # [J, 3, 3]: columns are the joint's anatomical axes in the (parent's) model-frame axes
    relaxed: torch.Tensor  # [J, 3] local: standing with arms down, elbows and fingers a little bent
    lower: torch.Tensor  # [J, 3] local
    upper: torch.Tensor  # [J, 3] local
    shape_mean: torch.Tensor  # [S]
    shape_spread: torch.Tensor  # [S]
    shape_lower: torch.Tensor  # [S]
    shape_upper: torch.Tensor  # [S]

    @property
    def locked(self) -> torch.Tensor:
        return (self.upper - self.lower).abs().amax(-1) == 0

    def to_pose(self, local: torch.Tensor) -> torch.Tensor:
        """[..., J, 3] local components -> [..., J, 3] axis-angle in the model's pose parametrisation."""
        return torch.einsum("jab,...jb->...ja", self.axes, local)

    def to_local(self, pose: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jba,...jb->...ja", self.axes, pose)


# Left and central joints: (lower, upper) local ranges in radians and a relaxed value. Local axes are the model
# frame's (x: the body's left, so +x bends the spine and knee forward; y: up, twist of legs and spine; z:
# forward, sideways bending) unless the joint is a hinge (elbow, finger) with axes of its own, where local x is
# the flexion. Right joints mirror left ones: their axes are diag(1, -1, -1) @ the left axes, so one table
# serves both sides.
_SPINE = ((-0.1, -0.15, -0.12), (0.25, 0.15, 0.12))  # per bone; Anny has four moving spine bones, SMPL three
_NECK = ((-0.4, -0.5, -0.3), (0.5, 0.5, 0.3))
_HIP = ((-2.0, -0.6, -0.35), (0.5, 0.6, 0.9))
_KNEE = ((0.0, 0.0, 0.0), (2.4, 0.0, 0.0))
# Knees and hips a little bent: a straight knee is where bending it either way in depth changes the 2D picture
# alike, so a fit started there cannot tell which way to go.
_HIP_RELAXED, _KNEE_RELAXED = (-0.1, 0, 0), (0.2, 0, 0)
_ANKLE = ((-0.7, -0.3, -0.3), (0.5, 0.3, 0.3))
_CLAVICLE = ((0.0, -0.2, -0.1), (0.0, 0.2, 0.3))
_WRIST = ((-0.7, -0.7, -0.7), (0.7, 0.7, 0.7))
_FINGER_BASE = ((-0.2, -0.3, 0.0), (1.5, 0.3, 0.0))  # flexion, spread
_FINGER = ((0.0, 0.0, 0.0), (1.7, 0.0, 0.0))
_THUMB = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
_FINGER_CURL = 0.3
MIRROR_AXES = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / torch.linalg.vector_norm(vector)


def _finger_axes(direction: torch.Tensor, palm: torch.Tensor) -> torch.Tensor:
    """Columns: flexion axis (turns the finger towards the palm), palm normal (spread), the finger itself."""
    direction = _unit(direction)
    palm = _unit(palm - (palm @ direction) * direction)
    return torch.stack([_unit(torch.linalg.cross(direction, palm)), palm, direction], 1)


def _anny_table(model: "AnnyBodyModel") -> dict[str, tuple]:
    """(range, relaxed, axes) per left or central bone; axes of hinges come from the average body's rest bones."""
    average = torch.full((1, len(model.shape_names)), 0.5, device=model.device)
    heads = model.model.get_rest_model(model._blendshape_coefficients(average))["rest_bone_heads"][0]
    heads = heads @ model.frame_rotation.T
    head = {name: heads[i] for i, name in enumerate(model.bone_labels)}
    eye = torch.eye(3, device=model.device)
    upper_arm = head["lowerarm01.L"] - head["upperarm01.L"]
    forearm = head["wrist.L"] - head["lowerarm01.L"]
    # Positive rotation about upper_arm x forearm folds the forearm towards the shoulder.
    hinge = _unit(torch.linalg.cross(upper_arm, forearm))
    elbow_axes = torch.stack([hinge, _unit(forearm), torch.linalg.cross(hinge, _unit(forearm))], 1)
    forearm_axes = torch.stack([_unit(forearm), hinge, torch.linalg.cross(_unit(forearm), hinge)], 1)
    # Left palm: with the fingers pointing along d and the index-to-little-finger line p, the palm faces d x p.
    across = head["finger2-1.L"] - head["finger5-1.L"]
    table = {name: (_SPINE, (0, 0, 0), eye) for name in ("spine04", "spine03", "spine02", "spine01")}
    table.update({
        "neck01": (_NECK, (0, 0, 0), eye), "head": (_NECK, (0, 0, 0), eye),
        "upperleg01.L": (_HIP, _HIP_RELAXED, eye), "lowerleg01.L": (_KNEE, _KNEE_RELAXED, eye),
        "foot.L": (_ANKLE, (0, 0, 0), eye), "clavicle.L": (_CLAVICLE, (0, 0, 0), eye),
        "upperarm01.L": (((-2.2, -1.2, -1.0), (0.9, 1.0, 1.6)), (-0.1, 0, -0.75), eye),
        # Anny's rest elbow is bent by about 0.75 rad already: full extension is negative flexion.
        "lowerarm01.L": (((-0.7, 0, 0), (1.9, 0, 0)), (-0.45, 0, 0), elbow_axes),
        "lowerarm02.L": (((-1.0, 0, 0), (1.0, 0, 0)), (0, 0, 0), forearm_axes),  # pronation, supination
        "wrist.L": (_WRIST, (0, 0, 0), eye),
        "finger1-1.L": (_THUMB, (0, 0, 0), eye),
        "finger1-2.L": (_THUMB, (0, 0, 0), eye), "finger1-3.L": (_THUMB, (0, 0, 0), eye),
    })
    for n in range(2, 6):
        direction = head[f"finger{n}-2.L"] - head[f"finger{n}-1.L"]
        axes = _finger_axes(direction, torch.linalg.cross(direction, across))
        table[f"finger{n}-1.L"] = (_FINGER_BASE, (_FINGER_CURL, 0, 0), axes)
        table[f"finger{n}-2.L"] = (_FINGER, (_FINGER_CURL, 0, 0), axes)
        table[f"finger{n}-3.L"] = (_FINGER, (_FINGER_CURL, 0, 0), axes)
    return table


def _smpl_table(model: "SmplFamilyBodyModel") -> dict[str, tuple]:
    """(range, relaxed, axes) per left or central joint of SMPL / SMPL-X, whose rest pose is a T-pose with the
    palms down: the left arm points along +x."""
    eye = torch.eye(3, device=model.device)
    # The left elbow folds the forearm forward: rotation about -y. Local y is then the forearm's twist.
    elbow_axes = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], device=model.device)
    table = {name: (_SPINE, (0, 0, 0), eye) for name in ("spine1", "spine2", "spine3")}
    table.update({
        "neck": (_NECK, (0, 0, 0), eye), "head": (_NECK, (0, 0, 0), eye),
        "left_hip": (_HIP, _HIP_RELAXED, eye), "left_knee": (_KNEE, _KNEE_RELAXED, eye),
        "left_ankle": (_ANKLE, (0, 0, 0), eye), "left_collar": (_CLAVICLE, (0, 0, 0), eye),
        # x: the arm's twist; y: swinging forward (negative) and back; z: raising it (positive) or lowering it.
        "left_shoulder": (((-1.2, -2.2, -1.6), (1.2, 0.6, 1.3)), (0, -0.1, -1.2), eye),
        "left_elbow": (((0.0, -1.0, 0.0), (2.4, 1.0, 0.0)), (0.3, 0, 0), elbow_axes),
        "left_wrist": (_WRIST, (0, 0, 0), eye),
    })
    # SMPL-X fingers lie along +x with the palm facing -y; zero pose is a flat hand.
    finger_axes = _finger_axes(torch.tensor([1.0, 0.0, 0.0], device=model.device),
                               torch.tensor([0.0, -1.0, 0.0], device=model.device))
    for finger in ("index", "middle", "ring", "pinky"):
        table[f"left_{finger}1"] = (_FINGER_BASE, (_FINGER_CURL, 0, 0), finger_axes)
        table[f"left_{finger}2"] = (_FINGER, (_FINGER_CURL, 0, 0), finger_axes)
        table[f"left_{finger}3"] = (_FINGER, (_FINGER_CURL, 0, 0), finger_axes)
    for k in (1, 2, 3):
        table[f"left_thumb{k}"] = (_THUMB, (0, 0, 0), eye)
    return table


def pose_prior(model: BodyModel) -> PosePrior:
    """Joint ranges, a relaxed pose and shape bounds for `model` (joints missing from the tables are locked)."""
    if model.kind == "anny":
        table, left, right = _anny_table(model), ".L", ".R"
        # Phenotypes in [0, 1]; Anny's age 0.5 is a teenager, adults sit near 0.75.
        shape_mean = torch.tensor([0.5, 0.75, 0.5, 0.5, 0.5, 0.5])
        shape_spread = torch.full((len(model.shape_names),), 0.2)
        shape_lower, shape_upper = torch.zeros(len(model.shape_names)), torch.ones(len(model.shape_names))
    else:
        table, left, right = _smpl_table(model), "left_", "right_"
        shape_mean = torch.zeros(len(model.shape_names))  # betas are standard-normal by construction
        shape_spread = torch.ones(len(model.shape_names))
        shape_lower, shape_upper = -3 * shape_spread, 3 * shape_spread
    joints = len(model.pose_joints)
    axes = torch.eye(3, device=model.device).repeat(joints, 1, 1)
    relaxed, lower, upper = (torch.zeros(joints, 3, device=model.device) for _ in range(3))
    mirror = MIRROR_AXES.to(model.device)
    for j, name in enumerate(model.pose_joints):
        mirrored = right in name and name.replace(right, left) in table
        entry = table.get(name.replace(right, left) if mirrored else name)
        if entry is None:
            continue
        (low, high), rest, joint_axes = entry
        axes[j] = mirror @ joint_axes if mirrored else joint_axes
        relaxed[j], lower[j], upper[j] = (torch.tensor(v, dtype=torch.float32) for v in (rest, low, high))
    to_device = {"device": model.device}
    return PosePrior(axes, relaxed, lower, upper, shape_mean.to(**to_device), shape_spread.to(**to_device),
                     shape_lower.to(**to_device), shape_upper.to(**to_device))
