"""The renderer's maps, by both methods (raster, raycast), against analytic shapes (cube, sphere, a floor that
passes under the camera), against the real Anny mesh, and against each other on a moving Anny body."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from humanim.stages.body_models import load_body_model
from humanim.stages.render import METHODS, PinholeCamera, Render, render_maps
from humanim.stages.render_pytorch3d import pytorch3d_available

CAMERA = PinholeCamera(fx=100.0, fy=100.0, cx=63.5, cy=63.5)
SIZE = 128
WARP_METHODS = [method for method in METHODS if method != "pytorch3d"]


def cube(centre, rotation=np.eye(3)) -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return (box.vertices @ rotation.T + centre).astype(np.float32), np.asarray(box.faces)


def rays(camera: PinholeCamera, size: int) -> np.ndarray:
    """[H, W, 3] ray of each pixel centre, z = 1."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    return np.stack([(x - camera.cx) / camera.fx, (y - camera.cy) / camera.fy, np.ones_like(x)], -1)


@pytest.mark.parametrize("method", WARP_METHODS)
def test_cube_facing_the_camera_has_its_analytic_depth_and_area(method):
    vertices, faces = cube([0.0, 0.0, 3.0])
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method=method)
    # The front face, x and y in [-0.5, 0.5] at z = 2.5, covers pixel centres 63.5 +- 20: 40 x 40 of them.
    assert maps["silhouette"].sum() == 1600
    np.testing.assert_allclose(maps["depth"][maps["silhouette"]], 2.5, rtol=1e-6)
    assert (maps["normal"][maps["silhouette"]][:, 2] < 0).all()  # towards the camera


@pytest.mark.parametrize("method", WARP_METHODS)
def test_camera_axes_and_a_cube_half_outside_the_image(method):
    # Centre 0.5 m right of the axis and 1.75 m down (y down): the front face spans x in [0, 1] -> u in
    # [63.5, 103.5] and its top edge sits at v = 63.5 + 100 * 1.25 / 2.5 = 113.5, 14 rows from the image's bottom.
    # Seen from above, the top face (y = 1.25, z in [2.5, 3.5]) shows too, from v = 63.5 + 125 / 3.5 = 99.2 down.
    vertices, faces = cube([0.5, 1.75, 3.0])
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method=method)
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


@pytest.mark.parametrize("method", WARP_METHODS)
def test_hits_lie_on_the_surface_and_barycentrics_rebuild_them(method):
    angle = np.radians(35.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    tilt = trimesh.transformations.rotation_matrix(np.radians(20.0), [1, 0, 0])[:3, :3]
    vertices, faces = cube([0.1, -0.2, 3.0], rotation @ tilt)
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method=method)
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


@pytest.mark.parametrize("method", WARP_METHODS)
def test_sphere_normals_depth_and_area(method):
    radius, distance = 0.5, 2.0
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    vertices = (sphere.vertices + [0.0, 0.0, distance]).astype(np.float32)
    maps = render_maps(vertices[None], sphere.faces, CAMERA, SIZE, SIZE, method=method)
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


@pytest.mark.parametrize("method", WARP_METHODS)
def test_background_parts_and_threads(method):
    vertices, faces = cube([0.0, 0.0, 3.0])
    frames = np.stack([vertices, vertices + [0.3, 0.0, 0.5], vertices + [-0.4, 0.2, 1.0]])
    face_part = np.arange(len(faces), dtype=np.uint8) % 5
    maps = render_maps(frames, faces, CAMERA, SIZE, SIZE, face_part=face_part, method=method)
    hit = maps["silhouette"]
    assert maps["part"].dtype == np.uint8
    np.testing.assert_array_equal(maps["part"][hit], face_part[maps["face_id"][hit]] + 1)
    assert (maps["part"][~hit] == 0).all() and (maps["face_id"][~hit] == -1).all()
    assert (maps["depth"][~hit] == 0).all() and (maps["normal"][~hit] == 0).all()
    assert (maps["barycentric"][~hit] == 0).all()
    threaded = render_maps(frames, faces, CAMERA, SIZE, SIZE, face_part=face_part, threads=2, method=method)
    assert threaded.keys() == maps.keys()
    for name in maps:
        np.testing.assert_array_equal(threaded[name], maps[name], err_msg=name)


@pytest.mark.parametrize("method", WARP_METHODS)
def test_anny_silhouette_fills_the_box_of_its_projected_vertices(method):
    model = load_body_model("anny")
    zeros = torch.zeros(1, 3)
    with torch.no_grad():
        out = model.forward(torch.full((1, 6), 0.5), torch.zeros(1, len(model.pose_joints), 3), zeros, zeros)
    # Model frame (y up, facing +z) to the camera's (y down, looking along +z): the body faces the camera.
    vertices = out.vertices[0].numpy() * [1.0, -1.0, -1.0] + [0.0, 0.0, 3.0]
    camera = PinholeCamera(fx=130.0, fy=130.0, cx=127.5, cy=127.5)
    maps = render_maps(vertices[None], model.faces, camera, 256, 256, face_part=model.face_part, method=method)
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


@pytest.mark.parametrize("method", WARP_METHODS)
def test_a_floor_reaching_behind_the_camera_has_its_analytic_depth(method):
    # The plane y = 1 (1 m below the camera, y down) from z = -2 to z = 45: its faces have vertices behind the
    # camera, so they have no bounded projection. A pixel row v below the horizon sees it at z = fy / (v - cy).
    vertices = np.array([[-20, 1, -2], [20, 1, -2], [20, 1, 45], [-20, 1, 45]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    maps = render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method=method)
    rows = np.arange(SIZE)
    expected_depth = CAMERA.fy / (rows - CAMERA.cy)
    seen_rows = (rows > CAMERA.cy) & (expected_depth < 45)
    hit = maps["silhouette"][0]
    assert not hit[~seen_rows].any()
    central = hit[:, 40:88]  # the floor's sides, 20 m away, are outside these columns at every depth seen
    assert central[seen_rows].all()
    np.testing.assert_allclose(maps["depth"][0][seen_rows][:, 40:88], np.repeat(expected_depth[seen_rows, None], 48, 1),
                               rtol=1e-5)
    assert (maps["normal"][0][hit][:, 1] == pytest.approx(-1.0, abs=1e-5))  # up, towards the camera above it


def moving_anny(frames: int = 12, height: int = 192, width: int = 160):
    """(model, camera-frame vertices [T, V, 3], camera) of a random Anny body moving at 24 fps."""
    from humanim.synth.motion import random_motion

    model = load_body_model("anny")
    motion, camera = random_motion(model, frames, 24.0, seed=3, height=height, width=width)
    with torch.no_grad():
        vertices = model(motion.shape, motion.pose, motion.global_orient, motion.transl).vertices.numpy()
    return model, vertices, camera


def test_raster_and_raycast_give_the_same_maps_of_a_moving_anny_body():
    model, vertices, camera = moving_anny()
    raster, raycast = (render_maps(vertices, model.faces, camera, 192, 160, face_part=model.face_part, method=method)
                       for method in ("raster", "raycast"))
    body = raycast["silhouette"]
    assert body.sum() > 12 * 2000
    # Silhouettes equal but for pixel centres on the mesh's outline; faces equal but where two meet at one depth.
    assert (raster["silhouette"] != body).sum() <= 1e-3 * body.sum()
    same_face = raster["face_id"] == raycast["face_id"]
    assert same_face[body].mean() >= 0.995
    agree = same_face & body
    np.testing.assert_allclose(raster["depth"][agree], raycast["depth"][agree], rtol=1e-4)
    np.testing.assert_allclose(raster["barycentric"][agree], raycast["barycentric"][agree], atol=5e-3)
    np.testing.assert_allclose(raster["normal"][agree], raycast["normal"][agree], atol=5e-3)
    np.testing.assert_array_equal(raster["part"][agree], raycast["part"][agree])
    # Where the faces differ they are neighbours at the same depth: the surface seen is the same.
    differ = ~same_face & body & raster["silhouette"]
    np.testing.assert_allclose(raster["depth"][differ], raycast["depth"][differ], rtol=2e-2)


def test_an_unknown_method_is_a_clear_error():
    vertices, faces = cube([0.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="unknown render method 'zbuffer': use one of raster, raycast, pytorch3d"):
        render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method="zbuffer")
    with pytest.raises(ValueError, match="unknown render method 'zbuffer'"):
        Render.check_environment({"method": "zbuffer"})


@pytest.mark.skipif(pytorch3d_available(), reason="PyTorch3D is installed here: its agreement test runs instead")
def test_the_pytorch3d_method_without_pytorch3d_is_a_clear_error():
    vertices, faces = cube([0.0, 0.0, 3.0])
    with pytest.raises(RuntimeError, match="needs PyTorch3D, which is not installed.*the default method, raster"):
        render_maps(vertices[None], faces, CAMERA, SIZE, SIZE, method="pytorch3d")
    with pytest.raises(RuntimeError, match="needs PyTorch3D"):
        Render.check_environment({"method": "pytorch3d"})


@pytest.mark.skipif(not pytorch3d_available(), reason="PyTorch3D is not installed (optional GPU back-end; no "
                    "package for this machine): its agreement with Warp is checked where it is")
def test_pytorch3d_sees_the_faces_warp_sees():
    from humanim.stages.render_pytorch3d import rasterize_face_ids

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, vertices, camera = moving_anny(frames=4, height=256, width=192)
    raster = render_maps(vertices, model.faces, camera, 256, 192, face_part=model.face_part)
    face_id, depth = rasterize_face_ids(vertices, model.faces, camera.fx, camera.fy, camera.cx, camera.cy, 256, 192,
                                        device)
    body = raster["silhouette"]
    assert ((face_id >= 0) != body).sum() <= 1e-3 * body.sum()
    same_face = face_id == raster["face_id"]
    assert same_face[body].mean() >= 0.995
    np.testing.assert_allclose(depth[same_face & body], raster["depth"][same_face & body], rtol=1e-4)
    maps = render_maps(vertices, model.faces, camera, 256, 192, face_part=model.face_part, device=device,
                       method="pytorch3d")
    np.testing.assert_array_equal(maps["face_id"], face_id)


def test_the_render_kernels_compile_for_cuda(tmp_path):
    # No GPU here: Warp's bundled NVRTC compiles the module's kernels to PTX for an sm_80 card ahead of time, which
    # catches a kernel that only the CPU compiler accepts, and shows the z-buffer's 64-bit minimum is a hardware atomic.
    import warp as wp

    import humanim.stages.render as render

    (ptx,) = wp.compile_aot_module(render.__name__, arch=80, module_dir=tmp_path, use_ptx=True)
    code = ptx.read_text()
    for kernel in ("_rasterize_faces", "_shade_spans", "_cast_rays", "_accumulate_vertex_normals"):
        assert f".entry {kernel}_" in code, kernel
    assert "atom.global.min.u64" in code
