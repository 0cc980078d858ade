"""Warp ray-cast maps against analytic shapes (cube, sphere) and against the real Anny mesh."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from humanim.stages.body_models import load_body_model
from humanim.stages.render import PinholeCamera, render_maps

CAMERA = PinholeCamera(fx=100.0, fy=100.0, cx=63.5, cy=63.5)
SIZE = 128


def cube(centre, rotation=np.eye(3)) -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return (box.vertices @ rotation.T + centre).astype(np.float32), np.asarray(box.faces)


def rays(camera: PinholeCamera, size: int) -> np.ndarray:
    """[H, W, 3] ray of each pixel centre, z = 1."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    return np.stack([(x - camera.cx) / camera.fx, (y - camera.cy) / camera.fy, np.ones_like(x)], -1)


def test_cube_facing_the_camera_has_its_analytic_depth_and_area():
    vertices, faces = cube([0.0, 0.0, 3.0])
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE)
    # The front face, x and y in [-0.5, 0.5] at z = 2.5, covers pixel centres 63.5 +- 20: 40 x 40 of them.
    assert maps["silhouette"].sum() == 1600
    np.testing.assert_allclose(maps["depth"][maps["silhouette"]], 2.5, rtol=1e-6)
    assert (maps["normal"][maps["silhouette"]][:, 2] < 0).all()  # towards the camera


def test_camera_axes_and_a_cube_half_outside_the_image():
    # Centre 0.5 m right of the axis and 1.75 m down (y down): the front face spans x in [0, 1] -> u in
    # [63.5, 103.5] and its top edge sits at v = 63.5 + 100 * 1.25 / 2.5 = 113.5, 14 rows from the image's bottom.
    # Seen from above, the top face (y = 1.25, z in [2.5, 3.5]) shows too, from v = 63.5 + 125 / 3.5 = 99.2 down.
    vertices, faces = cube([0.5, 1.75, 3.0])
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE)
    silhouette = maps["silhouette"][0]
    rows, columns = np.nonzero(silhouette)
    assert (columns.min(), columns.max()) == (64, 103)
    assert (rows.min(), rows.max()) == (100, 127)
    front_area = 40 * 14
    top_rows = np.arange(100, 114)
    top_area = (np.floor(63.5 + 100 * (top_rows - 63.5) / 125) - 63).sum()  # columns 64 .. 63.5 + 100 / z
    assert silhouette.sum() == front_area + top_area
    np.testing.assert_allclose(maps["depth"][0, 114:, 64:104], 2.5, rtol=1e-6)
    np.testing.assert_allclose(maps["depth"][0, top_rows, 64], 125 / (top_rows - 63.5), rtol=1e-5)


def test_hits_lie_on_the_surface_and_barycentrics_rebuild_them():
    angle = np.radians(35.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    tilt = trimesh.transformations.rotation_matrix(np.radians(20.0), [1, 0, 0])[:3, :3]
    vertices, faces = cube([0.1, -0.2, 3.0], rotation @ tilt)
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE)
    hit = maps["silhouette"][0]
    points = (rays(CAMERA, SIZE) * maps["depth"][0, ..., None])[hit]
    # On the surface: in the cube's own frame, the largest coordinate is 0.5.
    local = (points - [0.1, -0.2, 3.0]) @ (rotation @ tilt)
    np.testing.assert_allclose(np.abs(local).max(axis=1), 0.5, atol=1e-4)
    # The face and barycentric weights say the same point.
    corners = vertices[faces[maps["face_id"][0][hit]]]  # [N, 3, 3]
    rebuilt = np.einsum("nk,nkc->nc", maps["barycentric"][0][hit], corners)
    np.testing.assert_allclose(rebuilt, points, atol=1e-4)
    np.testing.assert_allclose(maps["barycentric"][0][hit].sum(-1), 1.0, atol=1e-5)
    assert (maps["barycentric"][0][hit] >= -1e-6).all()


def test_sphere_normals_depth_and_area():
    radius, distance = 0.5, 2.0
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    vertices = (sphere.vertices + [0.0, 0.0, distance]).astype(np.float32)
    maps = render_maps(vertices[None], sphere.faces, CAMERA, SIZE, SIZE)
    hit = maps["silhouette"][0]
    ray = rays(CAMERA, SIZE)[hit]
    points = ray * maps["depth"][0][hit][:, None]
    normals = maps["normal"][0][hit]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    radial = points - [0.0, 0.0, distance]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.degrees(np.arccos(np.clip((normals * radial).sum(1), -1, 1))).max() < 2.0
    # Facing the camera: against the ray, up to the slack of interpolated normals at the rim.
    assert ((normals * ray).sum(1) / np.linalg.norm(ray, axis=1)).max() < 0.02
    assert maps["depth"][0, 63:65, 63:65].min() == pytest.approx(distance - radius, abs=2e-3)
    # A sphere seen from its centre's axis projects to a disc of radius f r / sqrt(d^2 - r^2).
    disc = np.pi * (CAMERA.fx * radius / np.sqrt(distance**2 - radius**2)) ** 2
    assert hit.sum() == pytest.approx(disc, rel=0.02)


def test_background_parts_and_threads():
    vertices, faces = cube([0.0, 0.0, 3.0])
    frames = np.stack([vertices, vertices + [0.3, 0.0, 0.5], vertices + [-0.4, 0.2, 1.0]])
    face_part = np.arange(len(faces), dtype=np.uint8) % 5
    maps = render_maps(frames, faces, CAMERA, SIZE, SIZE, face_part=face_part)
    hit = maps["silhouette"]
    assert maps["part"].dtype == np.uint8
    np.testing.assert_array_equal(maps["part"][hit], face_part[maps["face_id"][hit]] + 1)
    assert (maps["part"][~hit] == 0).all() and (maps["face_id"][~hit] == -1).all()
    assert (maps["depth"][~hit] == 0).all() and (maps["normal"][~hit] == 0).all()
    assert (maps["barycentric"][~hit] == 0).all()
    threaded = render_maps(frames, faces, CAMERA, SIZE, SIZE, face_part=face_part, threads=2)
    assert threaded.keys() == maps.keys()
    for name in maps:
        np.testing.assert_array_equal(threaded[name], maps[name], err_msg=name)


def test_anny_silhouette_fills_the_box_of_its_projected_vertices():
    model = load_body_model("anny")
    zeros = torch.zeros(1, 3)
    with torch.no_grad():
        out = model.forward(torch.full((1, 6), 0.5), torch.zeros(1, len(model.pose_joints), 3), zeros, zeros)
    # Model frame (y up, facing +z) to the camera's (y down, looking along +z): the body faces the camera.
    vertices = out.vertices[0].numpy() * [1.0, -1.0, -1.0] + [0.0, 0.0, 3.0]
    camera = PinholeCamera(fx=130.0, fy=130.0, cx=127.5, cy=127.5)
    maps = render_maps(vertices[None], model.faces, camera, 256, 256, face_part=model.face_part)
    rows, columns = np.nonzero(maps["silhouette"][0])
    u = vertices[:, 0] / vertices[:, 2] * camera.fx + camera.cx
    v = vertices[:, 1] / vertices[:, 2] * camera.fy + camera.cy
    # Pixel centres inside the projected extent, to one pixel: thin extremities (fingertips) can fall between.
    for found, low, high in ((columns, u.min(), u.max()), (rows, v.min(), v.max())):
        assert np.ceil(low) <= found.min() <= np.ceil(low) + 1
        assert np.floor(high) - 1 <= found.max() <= np.floor(high)
    head_rows = rows[maps["part"][0][rows, columns] == 1 + 15]
    foot_rows = rows[maps["part"][0][rows, columns] == 1 + 10]
    assert head_rows.max() < foot_rows.min()  # the head is drawn above the toes
