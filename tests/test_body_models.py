"""Body models: Anny (real, from its wheel) and the smplx path (a tiny model file in the real SMPL / SMPL-X format,
built here, since the real files cannot be shipped)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse
import torch

from humanim.schemas.keypoints import FACE, KEYPOINT_NAMES
from humanim.stages.body_models import (
    PART_INDEX, SMPL_PARTS, WHOLEBODY_INDEX, BodyModelFileNotFound, axis_angle_to_matrix, load_body_model,
)

SMPLX_PARENTS = (
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15]
    + [20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38]
    + [21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]
)
SMPL_PARENTS = SMPLX_PARENTS[:22] + [20, 21]


def write_tiny_smplx_format_model(path, kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A model file with every key and shape smplx reads from SMPL (.pkl) or SMPL-X (.npz) files, but two vertices
    per joint: vertex 2j sits on joint j (its joint regressor row is one-hot there) and both are skinned to joint j
    alone. Face j joins joint j's two vertices to its parent's first, so joint j dominates it."""
    rng = np.random.default_rng(seed)
    parents = np.array(SMPLX_PARENTS if kind == "smplx" else SMPL_PARENTS)
    joints = len(parents)
    joint_positions = rng.normal(scale=0.3, size=(joints, 3))
    template = np.repeat(joint_positions, 2, axis=0) + np.tile([[0, 0, 0], [0.03, 0.02, 0.01]], (joints, 1))
    regressor = np.zeros((joints, 2 * joints))
    regressor[np.arange(joints), 2 * np.arange(joints)] = 1
    weights = np.repeat(np.eye(joints), 2, axis=0)
    faces = np.array([[2 * j, 2 * j + 1, 2 * parents[j]] for j in range(1, joints)], dtype=np.uint32)
    shape_dims = 10 if kind == "smpl" else 20  # SMPL-X files hold 10 betas then 10 expressions
    data = dict(
        v_template=template, f=faces, J_regressor=regressor, weights=weights,
        kintree_table=np.stack([np.where(parents < 0, 4294967295, parents), np.arange(joints)]).astype(np.int64),
        shapedirs=rng.normal(scale=0.01, size=(2 * joints, 3, shape_dims)),
        posedirs=rng.normal(scale=0.01, size=(2 * joints, 3, 9 * (joints - 1))),
    )
    if kind == "smpl":
        with open(path, "wb") as file:  # the real SMPL pickles hold a scipy sparse joint regressor
            pickle.dump({**data, "J_regressor": scipy.sparse.csc_matrix(regressor)}, file, protocol=2)
        return data
    data.update(
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45), hands_meanl=rng.normal(size=45),
        hands_meanr=rng.normal(size=45),
        lmk_faces_idx=rng.integers(0, len(faces), 51), lmk_bary_coords=rng.dirichlet(np.ones(3), 51),
        dynamic_lmk_faces_idx=rng.integers(0, len(faces), (79, 17)),
        dynamic_lmk_bary_coords=rng.dirichlet(np.ones(3), (79, 17)),
    )
    np.savez(path, **data)
    return data


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


def zero_inputs(model, batch: int = 1):
    return (torch.full((1, len(model.shape_names)), 0.5), torch.zeros(batch, len(model.pose_joints), 3),
            torch.zeros(batch, 3), torch.zeros(batch, 3))


def test_anny_mesh_parts_and_keypoint_mask(anny):
    assert anny.faces.dtype == np.int32 and anny.faces.shape[1] == 3
    assert anny.face_part.shape == (len(anny.faces),) and anny.face_part.max() < len(SMPL_PARTS)
    expected = np.zeros(133, dtype=bool)
    expected[:23] = True  # Anny's COCO regressor: body and feet
    expected[91:] = True  # hands from bones and fingertips
    np.testing.assert_array_equal(anny.keypoint_mask, expected)
    assert not anny.keypoint_mask[FACE].any()


def test_anny_is_in_the_shared_model_frame(anny):
    out = anny.forward(*zero_inputs(anny))
    keypoints = out.joints_wholebody[0]
    at = {name: keypoints[WHOLEBODY_INDEX[name]] for name in KEYPOINT_NAMES}
    assert at["nose"][1] > at["left_hip"][1] > at["left_ankle"][1]  # y up
    assert at["nose"][2] > (at["left_ear"][2] + at["right_ear"][2]) / 2  # facing +z
    assert at["left_wrist"][0] > 0 > at["right_wrist"][0]  # x towards the body's left
    vertices, faces = out.vertices[0], torch.as_tensor(out.faces, dtype=torch.long)

    def centroid(part: str) -> torch.Tensor:
        return vertices[faces[torch.as_tensor(out.face_part == PART_INDEX[part])].reshape(-1)].mean(0)

    assert centroid("head")[1] > centroid("spine3")[1] > centroid("pelvis")[1] > centroid("left_knee")[1]
    assert centroid("left_hand")[0] > centroid("left_elbow")[0] > 0 > centroid("right_hand")[0]
    for part in set(SMPL_PARTS) - {"left_collar", "right_collar"}:  # Anny's clavicles dominate almost no skin
        assert (out.face_part == PART_INDEX[part]).any(), part


def test_anny_body_keypoints_are_anny_coco_regressor_on_the_vertices(anny):
    import anny as anny_package

    torch.manual_seed(0)
    shape = torch.rand(2, 6)
    pose = 0.3 * torch.randn(2, len(anny.pose_joints), 3)
    out = anny.forward(shape, pose, torch.randn(2, 3), torch.randn(2, 3))
    regressor = anny_package.KeypointsRegressor.coco(anny.model, labels=list(KEYPOINT_NAMES[:23]))
    expected = regressor({"vertices": out.vertices})
    # Float32 sums over up to 4105 vertices (the ears) differ in order: 0.1 mm tolerance.
    torch.testing.assert_close(out.joints_wholebody[:, :23], expected, atol=1e-4, rtol=0)
    assert (out.joints_wholebody[:, FACE] == 0).all()
    torch.testing.assert_close(out.joints_wholebody[:, WHOLEBODY_INDEX["left_hand_root"]],
                               out.joints_wholebody[:, WHOLEBODY_INDEX["left_wrist"]])


@pytest.mark.parametrize("shape_batch", [1, 3])
def test_anny_keypoints_only_equals_keypoints_of_the_skinned_mesh(anny, shape_batch):
    torch.manual_seed(shape_batch)
    shape = torch.rand(shape_batch, 6)
    pose = 0.4 * torch.randn(3, len(anny.pose_joints), 3)
    global_orient, transl = torch.randn(3, 3), torch.randn(3, 3)
    full = anny.forward(shape, pose, global_orient, transl).joints_wholebody
    fast = anny.keypoints_only(shape, pose, global_orient, transl)
    torch.testing.assert_close(fast, full, atol=2e-5, rtol=0)
    # The fingertips are single vertices of the skinned mesh.
    assert (full[:, anny.keypoint_mask] != 0).all()


def test_anny_keypoints_only_has_gradients_for_fitting(anny):
    shape = torch.full((1, 6), 0.5, requires_grad=True)
    pose = torch.zeros(2, len(anny.pose_joints), 3, requires_grad=True)
    anny.keypoints_only(shape, pose, torch.zeros(2, 3), torch.zeros(2, 3)).square().sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    assert torch.isfinite(shape.grad).all() and shape.grad.abs().sum() > 0


def test_anny_global_orient_and_transl_move_the_body_rigidly(anny):
    shape, pose, zeros, _ = zero_inputs(anny)
    global_orient, transl = torch.tensor([[0.3, -1.2, 0.5]]), torch.tensor([[0.1, -0.4, 2.0]])
    rest = anny.forward(shape, pose, zeros, zeros)
    moved = anny.forward(shape, pose, global_orient, transl)
    rotation = axis_angle_to_matrix(global_orient)[0]
    torch.testing.assert_close(moved.vertices, rest.vertices @ rotation.T + transl, atol=1e-5, rtol=0)
    mask = torch.as_tensor(anny.keypoint_mask)
    torch.testing.assert_close(moved.joints_wholebody[:, mask], rest.joints_wholebody[:, mask] @ rotation.T + transl,
                               atol=1e-5, rtol=0)


def test_anny_pose_bends_one_limb_about_its_joint(anny):
    shape, pose, zeros, _ = zero_inputs(anny)
    rest = anny.forward(shape, pose, zeros, zeros).joints_wholebody[0]
    bent_pose = pose.clone()
    bent_pose[0, anny.pose_joints.index("lowerarm01.L")] = torch.tensor([0.0, 0.0, 1.2])
    bent = anny.forward(shape, bent_pose, zeros, zeros).joints_wholebody[0]
    index = WHOLEBODY_INDEX
    for unmoved in ("nose", "right_wrist", "left_shoulder", "right_hand_pinky_finger4"):
        torch.testing.assert_close(bent[index[unmoved]], rest[index[unmoved]], atol=1e-6, rtol=0)
    for moved in ("left_wrist", "left_hand_thumb4", "left_hand_pinky_finger3"):
        assert (bent[index[moved]] - rest[index[moved]]).norm() > 0.05, moved
    # The forearm turns about the elbow, so the wrist keeps its distance to it (the regressed elbow itself moves
    # by millimetres: some of the skin it averages follows the forearm).
    elbow = rest[index["left_elbow"]]
    assert (bent[index["left_elbow"]] - elbow).norm() < 0.005
    assert abs((bent[index["left_wrist"]] - elbow).norm() - (rest[index["left_wrist"]] - elbow).norm()) < 0.01


def test_smplx_tiny_model_through_smplx(tmp_path):
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    data = write_tiny_smplx_format_model(path, "smplx")
    with pytest.warns(UserWarning, match="vertex ids are left out"):
        model = load_body_model("smplx", tmp_path)  # a folder holding the file
    assert len(model.pose_joints) == 54 and len(model.shape_names) == 10

    betas = torch.linspace(-1, 1, 10)[None]
    zero_pose, zeros = torch.zeros(1, 54, 3), torch.zeros(1, 3)
    out = model.forward(betas, zero_pose, zeros, zeros)
    shaped = data["v_template"] + data["shapedirs"][:, :, :10] @ betas[0].double().numpy()
    np.testing.assert_allclose(out.vertices[0].numpy(), shaped, atol=1e-5)

    keypoints = out.joints_wholebody[0].numpy()
    joint = {name: shaped[2 * j] for name, j in (("left_elbow", 18), ("right_knee", 5), ("left_hand_root", 20),
                                                  ("left_hand_thumb1", 37), ("left_hand_forefinger3", 27),
                                                  ("right_hand_pinky_finger2", 47), ("right_hand_ring_finger1", 49))}
    for name, position in joint.items():
        np.testing.assert_allclose(keypoints[WHOLEBODY_INDEX[name]], position, atol=1e-5, err_msg=name)
    # Face landmarks: the file's barycentric embeddings; at zero head rotation the contour's first LUT row.
    face_idx = np.concatenate([data["dynamic_lmk_faces_idx"][0], data["lmk_faces_idx"]])
    face_bary = np.concatenate([data["dynamic_lmk_bary_coords"][0], data["lmk_bary_coords"]])
    landmarks = np.einsum("lk,lkc->lc", face_bary, shaped[data["f"][face_idx].astype(int)])
    np.testing.assert_allclose(keypoints[FACE], landmarks, atol=1e-5)
    expected_mask = np.zeros(133, dtype=bool)
    expected_mask[[WHOLEBODY_INDEX[name] for name in ("left_shoulder", "right_ankle", "left_hand_root",
                                                      "right_hand_thumb3", "left_hand_middle_finger2")]] = True
    assert model.keypoint_mask[expected_mask].all() and model.keypoint_mask[FACE].all()
    assert not model.keypoint_mask[[WHOLEBODY_INDEX["nose"], WHOLEBODY_INDEX["left_heel"],
                                    WHOLEBODY_INDEX["left_hand_thumb4"]]].any()
    assert (out.joints_wholebody[0, ~torch.as_tensor(model.keypoint_mask)] == 0).all()

    # Face j belongs to joint j: SMPL regions, with the jaw and eyes in the head and the fingers in the hands.
    part_of_joint = {1: "left_hip", 15: "head", 22: "head", 24: "head", 21: "right_wrist", 37: "left_hand",
                     54: "right_hand"}
    for j, part in part_of_joint.items():
        assert SMPL_PARTS[out.face_part[j - 1]] == part, j

    # global_orient turns the body about the pelvis joint; pose blend shapes ignore it; transl moves it.
    global_orient, transl = torch.tensor([[0.2, 0.9, -0.4]]), torch.tensor([[1.0, 2.0, 3.0]])
    moved = model.forward(betas, zero_pose, global_orient, transl).vertices[0].numpy()
    rotation = axis_angle_to_matrix(global_orient)[0].double().numpy()
    pelvis = shaped[0]
    np.testing.assert_allclose(moved, (shaped - pelvis) @ rotation.T + pelvis + transl.double().numpy(), atol=1e-5)


def test_smpl_tiny_pickle_model_through_smplx(tmp_path):
    path = tmp_path / "basicmodel_neutral.pkl"
    data = write_tiny_smplx_format_model(path, "smpl")
    with pytest.warns(UserWarning):
        model = load_body_model("smpl", path)
    assert model.pose_joints[-2:] == ("left_hand", "right_hand")
    pose = torch.zeros(1, 23, 3)
    pose[0, model.pose_joints.index("left_elbow")] = torch.tensor([0.0, 1.0, 0.0])
    out = model.forward(torch.zeros(1, 10), pose, torch.zeros(1, 3), torch.zeros(1, 3))
    vertices = out.vertices[0].numpy()
    template = data["v_template"]
    # Bending the left elbow leaves the elbow joint in place and moves the forearm's vertices (joint 18's).
    np.testing.assert_allclose(out.joints_wholebody[0, WHOLEBODY_INDEX["left_elbow"]].numpy(), template[36],
                               atol=1e-5)
    assert np.linalg.norm(vertices[2 * 20] - template[2 * 20]) > 0.01  # the wrist, a descendant
    assert model.keypoint_mask.sum() == 14 and not model.keypoint_mask[FACE].any()
    np.testing.assert_array_equal(out.face_part, np.arange(1, 24))  # face j-1 is joint j's, SMPL regions as is


def test_missing_smplx_file_says_where_it_looked_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANIM_MODELS", str(tmp_path / "store"))
    with pytest.raises(FileNotFoundError) as caught:
        load_body_model("smplx")
    assert isinstance(caught.value, BodyModelFileNotFound)
    message = str(caught.value)
    assert "https://smpl-x.is.tue.mpg.de" in message and str(tmp_path / "store" / "SMPLX_NEUTRAL.npz") in message
    missing = tmp_path / "SMPL_NEUTRAL.pkl"
    with pytest.raises(BodyModelFileNotFound, match="https://smpl.is.tue.mpg.de") as caught:
        load_body_model("smpl", missing)
    assert str(missing) in str(caught.value)


def test_unknown_model_and_anny_path_are_refused():
    with pytest.raises(ValueError, match="unknown body model"):
        load_body_model("star")
    with pytest.raises(ValueError, match="model_path must be None"):
        load_body_model("anny", "/some/path")
