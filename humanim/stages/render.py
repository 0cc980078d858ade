"""Render a posed body mesh to per-pixel maps with NVIDIA Warp kernels (one code path for CPU and CUDA).

Three methods give the same maps:
- `raster` (default): a z-buffer. Every face visits the pixel centres inside its projected box, tests them
  against its three edges and keeps the nearest hit per pixel with one 64-bit atomic minimum of (depth, face id);
  a second kernel then shades each pixel from the face it kept.
- `raycast`: a ray per pixel against a BVH of the mesh (`wp.mesh_query_ray`), the reference the raster method is
  tested against: face ids equal on over 99.5% of body pixels of a moving Anny clip (they differ only where two
  faces meet at the same depth), depth within 3e-5 relative where they agree (tests/test_render.py holds them to
  99.5% and 1e-4).
- `pytorch3d`: PyTorch3D's mesh rasterizer decides which face each pixel sees, where PyTorch3D is installed
  (an optional GPU back-end, render_pytorch3d.py); the raster method's kernel shades those pixels.
On the CPU, rasterising the Anny mesh at 512 x 512 ran 3.1x to 4.2x faster than ray casting (docs/BENCHMARKS.md): a body
face covers a few pixels, so testing them costs less than one BVH traversal per pixel, and no BVH is built.

Camera: OpenCV pinhole in the camera frame (x right, y down, z forward, metres); pixel (x, y) is the ray through
((x - cx) / fx, (y - cy) / fy, 1), so integer pixel coordinates are pixel centres, as in OpenCV. Because that ray
has z = 1, a hit's distance along it is the z-depth itself.

Maps for T frames at H x W (background values in brackets):
- face_id      int32   [T, H, W]     index of the face seen (-1)
- barycentric  float32 [T, H, W, 3]  weights of faces[f, 0], faces[f, 1], faces[f, 2] at the hit; they sum to 1 (0)
- depth        float32 [T, H, W]     z-depth in metres (0)
- normal       float32 [T, H, W, 3]  unit surface normal in the camera frame, smooth (vertex normals interpolated)
                                     and turned towards the camera's side of the face (0)
- part         uint8   [T, H, W]     1 + face_part[f], i.e. 1 + index into body_models.SMPL_PARTS (0); only when
                                     face_part is given
- silhouette   bool    [T, H, W]     whether the pixel sees the body (False)

One Warp CPU launch runs on one core, so on CPU frames are split between `threads` workers (Warp's native calls
release the GIL); on CUDA all frames go in one call.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import warp as wp

from humanim.stages.base import Annotations, Clip, Resources, Stage

wp.set_module_options({"enable_backward": False})  # maps are not differentiated: compile forward kernels only

# Rays stop at this z-depth (metres); anything further is background.
MAX_DEPTH = 1.0e4
METHODS = ("raster", "raycast", "pytorch3d")
# The raster method's z-buffer key: depth in units of 2^-24 m above the low FACE_BITS bits holding the face id,
# so that one unsigned minimum keeps the nearest face (and, at equal depth, the lowest id: deterministic). 40 bits
# of depth reach 65,536 m, beyond MAX_DEPTH; 2^-24 m is finer than float32 depth at a metre.
FACE_BITS = 24
DEPTH_UNITS_PER_METRE = float(1 << 24)
EMPTY_KEY = wp.constant(wp.uint64(0xFFFFFFFFFFFFFFFF))
FACE_MASK = wp.constant(wp.uint64((1 << FACE_BITS) - 1))
# A face's pixel box is widened by this many pixels: the edge test is exact, the projected bounds are rounded.
BOX_SLACK = wp.constant(1.0e-3)
# A BVH is built (SAH) every this many frames and refitted to the frames between: a refit costs about a
# twentieth of a build (1 ms against 19 ms, Anny mesh, CPU) and bounds the same triangles, so the hits are the
# same, but as the body moves the refitted boxes loosen and rays slow down. On a clip at 24 fps, rebuilding every
# 4 frames gave 36 frames/s on one core, against 29 rebuilding every frame and 30 refitting only (docs/BENCHMARKS.md).
REBUILD_EVERY = 4


@dataclass(frozen=True)
class PinholeCamera:
    fx: float
    fy: float
    cx: float
    cy: float


@wp.kernel
def _accumulate_vertex_normals(points: wp.array2d(dtype=wp.vec3), faces: wp.array2d(dtype=wp.int32),
                               normals: wp.array2d(dtype=wp.vec3)):
    frame, face = wp.tid()
    a, b, c = faces[face, 0], faces[face, 1], faces[face, 2]
    # The unnormalised cross product weighs each face's normal by its area.
    area_normal = wp.cross(points[frame, b] - points[frame, a], points[frame, c] - points[frame, a])
    wp.atomic_add(normals, frame, a, area_normal)
    wp.atomic_add(normals, frame, b, area_normal)
    wp.atomic_add(normals, frame, c, area_normal)


@wp.kernel
def _rasterize_faces(points: wp.array2d(dtype=wp.vec3), faces: wp.array2d(dtype=wp.int32), fx: float, fy: float,
                     cx: float, cy: float, max_depth: float, zkey: wp.array3d(dtype=wp.uint64)):
    frame, face = wp.tid()
    a = points[frame, faces[face, 0]]
    b = points[frame, faces[face, 1]]
    c = points[frame, faces[face, 2]]
    height = zkey.shape[1]
    width = zkey.shape[2]
    x0 = int(0)
    y0 = int(0)
    x1 = width - 1
    y1 = height - 1
    # A face reaching behind the camera has no bounded projection: it tests the whole image.
    if a[2] > 0.0 and b[2] > 0.0 and c[2] > 0.0:
        xa = a[0] / a[2] * fx + cx
        xb = b[0] / b[2] * fx + cx
        xc = c[0] / c[2] * fx + cx
        ya = a[1] / a[2] * fy + cy
        yb = b[1] / b[2] * fy + cy
        yc = c[1] / c[2] * fy + cy
        x0 = wp.max(x0, int(wp.ceil(wp.min(xa, wp.min(xb, xc)) - BOX_SLACK)))
        x1 = wp.min(x1, int(wp.floor(wp.max(xa, wp.max(xb, xc)) + BOX_SLACK)))
        y0 = wp.max(y0, int(wp.ceil(wp.min(ya, wp.min(yb, yc)) - BOX_SLACK)))
        y1 = wp.min(y1, int(wp.floor(wp.max(ya, wp.max(yb, yc)) + BOX_SLACK)))
    # The ray d through a pixel meets the face where d = t (w_a a + w_b b + w_c c), with weights proportional to
    # d . (b x c), d . (c x a), d . (a x b). Their signs say whether it meets it at all, and are watertight: two
    # faces sharing an edge compute its product with opposite signs exactly, so no pixel falls between them. Both
    # windings count, as rays see both sides. The depth comes from the face normal, made of short edges: the
    # products above lose precision on a small face far from the camera, and only their signs are used.
    across_ab = wp.cross(a, b)
    across_bc = wp.cross(b, c)
    across_ca = wp.cross(c, a)
    face_normal = wp.cross(b - a, c - a)
    offset = wp.dot(face_normal, a)
    for y in range(y0, y1 + 1):
        ray_y = (float(y) - cy) / fy
        for x in range(x0, x1 + 1):
            ray = wp.vec3((float(x) - cx) / fx, ray_y, 1.0)
            w_c = wp.dot(ray, across_ab)
            w_a = wp.dot(ray, across_bc)
            w_b = wp.dot(ray, across_ca)
            if (w_a >= 0.0 and w_b >= 0.0 and w_c >= 0.0) or (w_a <= 0.0 and w_b <= 0.0 and w_c <= 0.0):
                facing = wp.dot(face_normal, ray)
                if facing != 0.0:
                    t = offset / facing  # the z-depth, as the ray has z = 1; negative behind the camera
                    if t > 0.0 and t < max_depth:
                        key = (wp.uint64(t * DEPTH_UNITS_PER_METRE) << wp.uint64(FACE_BITS)) | wp.uint64(face)
                        wp.atomic_min(zkey, frame, y, x, key)


@wp.func
def _interpolated_normal(vertex_normals: wp.array2d(dtype=wp.vec3), frame: int, a: int, b: int, c: int,
                         weights: wp.vec3, ray: wp.vec3, face_normal: wp.vec3) -> wp.vec3:
    """Vertex normals interpolated at the hit, turned to the side of the face the ray came from."""
    smooth = (weights[0] * wp.normalize(vertex_normals[frame, a]) + weights[1] * wp.normalize(vertex_normals[frame, b])
              + weights[2] * wp.normalize(vertex_normals[frame, c]))
    if wp.dot(face_normal, ray) > 0.0:
        smooth = -smooth
    return wp.normalize(smooth)


@wp.func
def _shade_pixel(frame: int, y: int, x: int, f: int, points: wp.array2d(dtype=wp.vec3),
                 faces: wp.array2d(dtype=wp.int32), vertex_normals: wp.array2d(dtype=wp.vec3),
                 face_label: wp.array(dtype=wp.int32), fx: float, fy: float, cx: float, cy: float,
                 face_id: wp.array3d(dtype=wp.int32), barycentric: wp.array3d(dtype=wp.vec3),
                 depth: wp.array3d(dtype=wp.float32), normal: wp.array3d(dtype=wp.vec3),
                 label: wp.array3d(dtype=wp.uint8)):
    ia = faces[f, 0]
    ib = faces[f, 1]
    ic = faces[f, 2]
    a = points[frame, ia]
    ray = wp.vec3((float(x) - cx) / fx, (float(y) - cy) / fy, 1.0)
    # Moller-Trumbore from the camera at the origin: edges from a, whose products keep their precision.
    edge_b = points[frame, ib] - a
    edge_c = points[frame, ic] - a
    across_c = wp.cross(ray, edge_c)
    determinant = wp.dot(edge_b, across_c)
    to_camera = -a
    across_b = wp.cross(to_camera, edge_b)
    w_b = wp.dot(to_camera, across_c) / determinant
    w_c = wp.dot(ray, across_b) / determinant
    weights = wp.vec3(1.0 - w_b - w_c, w_b, w_c)
    face_id[frame, y, x] = f
    barycentric[frame, y, x] = weights
    depth[frame, y, x] = wp.dot(edge_c, across_b) / determinant
    normal[frame, y, x] = _interpolated_normal(vertex_normals, frame, ia, ib, ic, weights, ray,
                                               wp.cross(edge_b, edge_c))
    label[frame, y, x] = wp.uint8(face_label[f])


@wp.kernel
def _shade_spans(zkey: wp.array3d(dtype=wp.uint64), span: int, points: wp.array2d(dtype=wp.vec3),
                 faces: wp.array2d(dtype=wp.int32), vertex_normals: wp.array2d(dtype=wp.vec3),
                 face_label: wp.array(dtype=wp.int32), fx: float, fy: float, cx: float, cy: float,
                 face_id: wp.array3d(dtype=wp.int32), barycentric: wp.array3d(dtype=wp.vec3),
                 depth: wp.array3d(dtype=wp.float32), normal: wp.array3d(dtype=wp.vec3),
                 label: wp.array3d(dtype=wp.uint8)):
    # A thread shades `span` pixels of a row: a whole row on the CPU, where a launch's cost per thread is about
    # that of shading a pixel (a thread per pixel was 3x slower), one pixel on CUDA. Outputs arrive filled with
    # background; only pixels some face won are written. A while loop: Warp's range() costs more per step.
    frame, y, block = wp.tid()
    x = block * span
    end = wp.min(x + span, zkey.shape[2])
    while x < end:
        key = zkey[frame, y, x]
        if key != EMPTY_KEY:
            _shade_pixel(frame, y, x, int(key & FACE_MASK), points, faces, vertex_normals, face_label, fx, fy, cx,
                         cy, face_id, barycentric, depth, normal, label)
        x += 1


@wp.kernel
def _cast_rays(mesh_ids: wp.array(dtype=wp.uint64), boxes: wp.array2d(dtype=wp.int32), x_start: int, y_start: int,
               faces: wp.array2d(dtype=wp.int32), vertex_normals: wp.array2d(dtype=wp.vec3),
               face_label: wp.array(dtype=wp.int32), fx: float, fy: float, cx: float, cy: float, max_depth: float,
               face_id: wp.array3d(dtype=wp.int32), barycentric: wp.array3d(dtype=wp.vec3),
               depth: wp.array3d(dtype=wp.float32), normal: wp.array3d(dtype=wp.vec3),
               label: wp.array3d(dtype=wp.uint8)):
    # Outputs arrive filled with background: only pixels inside the frame's box cast a ray.
    frame, row, column = wp.tid()
    x = x_start + column
    y = y_start + row
    if x < boxes[frame, 0] or y < boxes[frame, 1] or x > boxes[frame, 2] or y > boxes[frame, 3]:
        return
    direction = wp.vec3((float(x) - cx) / fx, (float(y) - cy) / fy, 1.0)
    hit = wp.mesh_query_ray(mesh_ids[frame], wp.vec3(0.0, 0.0, 0.0), direction, max_depth)
    if not hit.result:
        return
    f = hit.face
    weights = wp.vec3(hit.u, hit.v, 1.0 - hit.u - hit.v)
    face_id[frame, y, x] = f
    barycentric[frame, y, x] = weights
    depth[frame, y, x] = hit.t
    # hit.normal is the winding-oriented face normal: it tells which side the ray hit.
    normal[frame, y, x] = _interpolated_normal(vertex_normals, frame, faces[f, 0], faces[f, 1], faces[f, 2],
                                               weights, direction, hit.normal)
    label[frame, y, x] = wp.uint8(face_label[f])


def screen_boxes(vertices: np.ndarray, camera: PinholeCamera, height: int, width: int) -> np.ndarray:
    """Per frame, the pixels (x0, y0, x1, y1 inclusive) whose centres can see the mesh: the bounds of its projected
    vertices, since a triangle projects inside its vertices' hull. A frame with a vertex at or behind the camera
    plane gets the whole image; one entirely outside the image gets an empty box (x1 < x0)."""
    z = vertices[..., 2]
    in_front = (z > 0).all(axis=1)
    safe_z = np.where(z > 0, z, 1.0)
    x = vertices[..., 0] / safe_z * camera.fx + camera.cx
    y = vertices[..., 1] / safe_z * camera.fy + camera.cy
    # One pixel of margin: Warp's float32 rays and this projection may round a grazing pixel differently.
    boxes = np.stack([np.ceil(x.min(1)) - 1, np.ceil(y.min(1)) - 1, np.floor(x.max(1)) + 1, np.floor(y.max(1)) + 1],
                     axis=1)
    boxes = np.clip(boxes, -1, [width, height, width, height])  # keeps empty boxes empty after the cast to int
    whole_image = np.array([0, 0, width - 1, height - 1])
    return np.where(in_front[:, None], boxes, whole_image).astype(np.int32)


# name: (Warp dtype, NumPy dtype, channels, background value)
MAP_LAYOUT = {
    "face_id": (wp.int32, np.int32, (), -1),
    "barycentric": (wp.vec3, np.float32, (3,), 0),
    "depth": (wp.float32, np.float32, (), 0),
    "normal": (wp.vec3, np.float32, (3,), 0),
    "part": (wp.uint8, np.uint8, (), 0),
}


def _render_frames(vertices: np.ndarray, faces: np.ndarray, face_label: np.ndarray, camera: PinholeCamera,
                   maps: dict[str, np.ndarray], device: str, method: str) -> None:
    """Fill `maps` (background-filled, frames first) for vertices [T, V, 3] on `device` by `method`."""
    frames = len(vertices)
    on_cpu = wp.get_device(device).is_cpu
    with wp.ScopedDevice(device):
        points = wp.array(vertices, dtype=wp.vec3)
        face_array = wp.array(faces, dtype=wp.int32)
        labels = wp.array(face_label, dtype=wp.int32)
        vertex_normals = wp.zeros(vertices.shape[:2], dtype=wp.vec3)
        wp.launch(_accumulate_vertex_normals, dim=(frames, faces.shape[0]), inputs=[points, face_array],
                  outputs=[vertex_normals])
        # On CPU the kernels write straight into the NumPy maps (no copy); on CUDA into device maps copied back.
        outputs = {name: wp.array(maps[name], dtype=MAP_LAYOUT[name][0], copy=not on_cpu) for name in MAP_LAYOUT}
        shading = [face_array, vertex_normals, labels, camera.fx, camera.fy, camera.cx, camera.cy]
        if method == "raycast":
            _cast_frames(points, vertices, faces, camera, shading, outputs)
        else:
            if method == "raster":
                # On CPU NumPy fills the z-buffer 5x faster than wp.full's kernel does.
                shape = maps["face_id"].shape
                zkey = (wp.array(np.full(shape, EMPTY_KEY, np.uint64), dtype=wp.uint64, copy=False) if on_cpu
                        else wp.full(shape, EMPTY_KEY, dtype=wp.uint64))
                wp.launch(_rasterize_faces, dim=(frames, faces.shape[0]),
                          inputs=[points, face_array, camera.fx, camera.fy, camera.cx, camera.cy, MAX_DEPTH],
                          outputs=[zkey])
            else:
                from humanim.stages.render_pytorch3d import rasterize_face_ids

                seen, _ = rasterize_face_ids(vertices, faces, camera.fx, camera.fy, camera.cx, camera.cy,
                                             *maps["face_id"].shape[1:], device)
                # The shading kernel reads only the face id from a key: PyTorch3D's visibility, Warp's shading.
                zkey = wp.array(np.where(seen >= 0, seen.astype(np.uint64), EMPTY_KEY), dtype=wp.uint64)
            span = zkey.shape[2] if on_cpu else 1
            wp.launch(_shade_spans, dim=(*zkey.shape[:2], zkey.shape[2] // span),
                      inputs=[zkey, span, points, *shading], outputs=list(outputs.values()))
        if not on_cpu:
            for name, array in outputs.items():
                maps[name][...] = array.numpy()


def _cast_frames(points: wp.array, vertices: np.ndarray, faces: np.ndarray, camera: PinholeCamera, shading: list,
                 outputs: dict[str, wp.array]) -> None:
    """The raycast method: one launch per frame over that frame's box, with one BVH rebuilt every REBUILD_EVERY
    frames and refitted in between."""
    frames, height, width = outputs["face_id"].shape
    boxes = screen_boxes(vertices, camera, height, width)
    mesh_points = wp.array(vertices[0], dtype=wp.vec3)
    mesh = wp.Mesh(points=mesh_points, indices=wp.array(faces.reshape(-1), dtype=wp.int32))
    mesh_ids = wp.array([mesh.id], dtype=wp.uint64)
    frame_boxes = wp.array(boxes, dtype=wp.int32)
    face_array, vertex_normals, labels, *intrinsics = shading
    for t in range(frames):
        x_start, y_start = max(int(boxes[t, 0]), 0), max(int(boxes[t, 1]), 0)
        x_stop, y_stop = min(int(boxes[t, 2]), width - 1) + 1, min(int(boxes[t, 3]), height - 1) + 1
        if x_stop <= x_start or y_stop <= y_start:
            continue  # nothing of the body in this frame's image
        if t:
            wp.copy(mesh_points, points[t])
            if t % REBUILD_EVERY == 0:
                mesh = wp.Mesh(points=mesh_points, indices=mesh.indices)
                mesh_ids = wp.array([mesh.id], dtype=wp.uint64)
            else:
                mesh.refit()
        wp.launch(_cast_rays, dim=(1, y_stop - y_start, x_stop - x_start),
                  inputs=[mesh_ids, frame_boxes[t:t + 1], x_start, y_start, face_array, vertex_normals[t:t + 1],
                          labels, *intrinsics, MAX_DEPTH],
                  outputs=[array[t:t + 1] for array in outputs.values()])


def check_method(method: str) -> None:
    """A clear error for a method this install cannot run."""
    if method not in METHODS:
        raise ValueError(f"unknown render method {method!r}: use one of {', '.join(METHODS)}")
    if method == "pytorch3d":
        from humanim.stages.render_pytorch3d import pytorch3d_available

        if not pytorch3d_available():
            raise RuntimeError("render method 'pytorch3d' needs PyTorch3D, which is not installed: pip install "
                               "--no-build-isolation 'git+https://github.com/facebookresearch/pytorch3d.git' builds it "
                               "for the torch and CUDA you have; the default method, raster, runs on CPU and CUDA "
                               "with nothing more")


def render_maps(vertices: np.ndarray, faces: np.ndarray, camera: PinholeCamera, height: int, width: int,
                face_part: np.ndarray | None = None, device: str = "cpu", threads: int = 1,
                method: str = "raster") -> dict[str, np.ndarray]:
    """Maps (see the module docstring) of meshes with vertices [T, V, 3] in the camera frame and faces [F, 3]."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    if vertices.ndim != 3 or vertices.shape[-1] != 3 or faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"expected vertices [T, V, 3] and faces [F, 3], got {vertices.shape} and {faces.shape}")
    check_method(method)
    if method != "raycast" and len(faces) >= 1 << FACE_BITS:  # both shade from a key's low FACE_BITS bits
        raise ValueError(f"the {method} method holds face ids in {FACE_BITS} bits: {len(faces)} faces is too many")
    face_label = np.zeros(len(faces), np.int32) if face_part is None else face_part.astype(np.int32) + 1
    frames = len(vertices)
    # np.zeros memory is zeroed lazily by the OS, so background that is never written costs nothing here.
    shape = (frames, height, width)
    maps = {name: np.full(shape + channels, background, dtype) if background else np.zeros(shape + channels, dtype)
            for name, (_, dtype, channels, background) in MAP_LAYOUT.items()}
    if wp.get_device(device).is_cuda or threads <= 1 or frames <= 1 or method == "pytorch3d":
        _render_frames(vertices, faces, face_label, camera, maps, device, method)
    else:
        wp.load_module(device=device)  # compile or load the kernels once, before threads race to do it
        # Each worker fills its own run of frames in place: contiguous views of the shared maps.
        bounds = np.linspace(0, frames, min(threads, frames) + 1).astype(int)
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            list(pool.map(lambda start, stop: _render_frames(
                vertices[start:stop], faces, face_label, camera,
                {name: array[start:stop] for name, array in maps.items()}, device, method), bounds[:-1],
                bounds[1:]))
    maps["silhouette"] = maps["face_id"] >= 0
    if face_part is None:
        del maps["part"]
    return maps


# --------------------------------------------------------------------------------------------------- the stage

class FitRenderer:
    """Renders a clip's body fit (stages/fit.py's BodyFit, the `body` field) with the body model it was fitted
    with, which it loads once."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", method: str = "raster"):
        self.model_path, self.device, self.method = model_path, device, method
        self._models: dict = {}

    def model(self, kind: str):
        if kind not in self._models:
            from humanim.stages.body_models import load_body_model

            self._models[kind] = load_body_model(kind, self.model_path, device=self.device)
        return self._models[kind]

    def render(self, fit, height: int, width: int, frames: np.ndarray | None = None,
               threads: int = 1) -> dict[str, np.ndarray]:
        """Maps of the fit's frames (all, or those indexed by `frames`)."""
        from humanim.stages.body import posed_vertices

        model = self.model(fit.model)
        device = "cuda" if str(self.device).startswith("cuda") else "cpu"
        return render_maps(posed_vertices(model, fit, frames), model.faces, fit.pinhole, height, width,
                           face_part=model.face_part, device=device, threads=threads, method=self.method)


def encode_maps(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The renderer's maps as the registry stores them: depth in millimetres (uint16, 0 off the body), normals
    as uint8 (round((n + 1) * 127.5), 0 off the body), part labels, the bit-packed silhouette, face ids."""
    silhouette = maps["silhouette"]
    depth_mm = np.where(silhouette, np.clip(np.rint(maps["depth"] * 1000), 1, 65535), 0).astype(np.uint16)
    normal = np.where(silhouette[..., None], np.rint((maps["normal"] + 1) * 127.5), 0).astype(np.uint8)
    return {"depth": depth_mm, "normal": normal, "part": maps["part"], "face_id": maps["face_id"],
            "body_mask": np.packbits(silhouette, axis=-1)}


class Render(Stage):
    """Depth, normal, body-part, silhouette and surface-id maps of the fitted body at clip resolution.

    Config keys: model_path (SMPL / SMPL-X file for those fits; the body section's), device (cpu | cuda),
    threads (Warp CPU launches run on one core each; the pipeline gives a clip one core), method (raster |
    raycast | pytorch3d; the same maps, see the module docstring).
    """

    name = "render"
    version = "2"  # 2: rasterised by default; face ids may differ from version 1's ray casting where faces tie
    resources = Resources(cpus=1, gpus=0, stateful=True)  # keeps the body model loaded

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        check_method(config["method"])

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.threads = int(config["threads"])
        self.method = str(config["method"])
        check_method(self.method)
        self._renderer = FitRenderer(config["model_path"], str(config["device"]), self.method)

    def __call__(self, clip: Clip) -> Annotations:
        if "body" not in clip.fields:
            raise ValueError("the render stage draws the body fit: put 'body' before 'render' in `stages`")
        from humanim.stages.fit import BodyFit

        fit = BodyFit.from_npz_bytes(clip.fields["body"])
        height, width = clip.frames.shape[1:3]
        maps = self._renderer.render(fit, height, width, threads=self.threads)
        # PyTorch3D decides visibility in its method; Warp shades every method's pixels.
        back_end = "pytorch3d + warp" if self.method == "pytorch3d" else "warp"
        meta = {"model": fit.model, "back_end": back_end, "method": self.method}
        return Annotations(fields=encode_maps(maps), meta=meta,
                           qa={"body_pixel_share": float(maps["silhouette"].mean())})
