"""Synthetic motion of the real Anny model: deterministic per seed, inside the joint ranges, smooth, turning within
the promised yaw, and framed whole in every frame."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from humanim.stages.body_models import axis_angle_to_matrix, load_body_model, pose_prior
from humanim.stages.render import PinholeCamera
from humanim.synth.motion import MARGIN, MAX_YAW, random_motion, project

FRAMES, FPS, HEIGHT, WIDTH = 40, 25.0, 256, 192


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def motion(anny):
    return random_motion(anny, FRAMES, FPS, seed=7, height=HEIGHT, width=WIDTH)


def test_same_seed_same_motion_and_another_seed_another(anny, motion):
    again, camera = random_motion(anny, FRAMES, FPS, seed=7, height=HEIGHT, width=WIDTH)
    first, first_camera = motion
    for name in ("shape", "pose", "global_orient", "transl"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert camera == first_camera
    other, _ = random_motion(anny, FRAMES, FPS, seed=8, height=HEIGHT, width=WIDTH)
    assert not torch.equal(other.pose, first.pose) and not torch.equal(other.shape, first.shape)


def test_pose_stays_in_the_joint_ranges_and_moves_smoothly(anny, motion):
    body, _ = motion
    prior = pose_prior(anny)
    assert body.shape.shape == (1, len(anny.shape_names)) and body.pose.shape == (FRAMES, len(anny.pose_joints), 3)
    local = prior.to_local(body.pose)
    assert (local >= prior.lower - 1e-5).all() and (local <= prior.upper + 1e-5).all()
    assert (local[:, prior.locked] - prior.relaxed[prior.locked]).abs().max() < 1e-5
    moving = local[:, ~prior.locked]
    assert moving.std(0).max() > 0.05  # something moves
    step = (moving[1:] - moving[:-1]).abs()
    assert step.max() < 0.15  # radians per frame at 25 fps: no jumps
    assert (body.shape >= 0).all() and (body.shape <= 1).all()


def test_body_faces_the_camera_within_the_yaw_range_and_stays_upright(motion):
    body, _ = motion
    rotation = axis_angle_to_matrix(body.global_orient)
    facing = rotation[:, :, 2]  # the model's forward axis in the camera frame
    up = rotation[:, :, 1]
    yaw = torch.atan2(facing[:, 0], -facing[:, 2])
    assert yaw.abs().max() <= MAX_YAW + 0.05
    assert (up[:, 1] < -0.95).all()  # up in the model is up (-y) in the camera
    assert (body.transl[:, 2] > 1.0).all()


def test_whole_body_projects_inside_the_frame_with_the_margin(anny, motion):
    body, camera = motion
    assert camera == PinholeCamera(math.hypot(HEIGHT, WIDTH), math.hypot(HEIGHT, WIDTH), (WIDTH - 1) / 2,
                                   (HEIGHT - 1) / 2)
    with torch.no_grad():
        vertices = anny(body.shape, body.pose, body.global_orient, body.transl).vertices
    pixels = project(vertices, camera)
    assert pixels[..., 0].min() >= MARGIN * WIDTH - 1 and pixels[..., 0].max() <= (1 - MARGIN) * WIDTH
    assert pixels[..., 1].min() >= MARGIN * HEIGHT - 1 and pixels[..., 1].max() <= (1 - MARGIN) * HEIGHT
    # Tight on at least one side in some frame: the camera is not needlessly far.
    extent = max((pixels[..., 0].max() - pixels[..., 0].min()) / WIDTH,
                 (pixels[..., 1].max() - pixels[..., 1].min()) / HEIGHT)
    assert extent > 0.5


def test_project_is_the_pinhole_for_numpy_and_torch():
    camera = PinholeCamera(100.0, 120.0, 50.0, 40.0)
    points = np.array([[[0.2, -0.1, 2.0], [0.0, 0.0, 4.0]]])
    expected = np.array([[[60.0, 34.0], [50.0, 40.0]]])
    np.testing.assert_allclose(project(points, camera), expected)
    np.testing.assert_allclose(project(torch.as_tensor(points), camera).numpy(), expected)
