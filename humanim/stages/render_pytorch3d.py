"""The `pytorch3d` render method: which face each pixel sees, from PyTorch3D's mesh rasterizer (an optional GPU
back-end: pytorch3d is not a dependency, and its CPU rasterizer is far slower than Warp's).

Only visibility comes from PyTorch3D; render.py shades the pixels from those face ids with the same kernel as
its own rasterizer, so the maps differ from Warp's only where the two see different faces. PyTorch3D's own
z-buffer is returned too, for the agreement test (depth within 1e-4 of Warp's).

Conventions: render.py's camera is OpenCV's, pixel centres at integer coordinates. PyTorch3D's conversion from
OpenCV (`cameras_from_opencv_projection`) puts pixel centres at half-integers (its principal point of a W-wide
image's centre is W / 2), so the principal point is moved by half a pixel here. With R = I and t = 0 the
converted camera's world frame is the OpenCV camera frame, so the vertices go in as they are.
"""
from __future__ import annotations

import numpy as np


def pytorch3d_available() -> bool:
    try:
        import pytorch3d.renderer  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize_face_ids(vertices: np.ndarray, faces: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                       height: int, width: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(face id [T, H, W] int32, -1 off the mesh; z-depth [T, H, W] float32, 0 off the mesh) of meshes with
    vertices [T, V, 3] in the OpenCV camera frame, by PyTorch3D on `device` (render.check_method first says
    clearly when PyTorch3D is missing)."""
    import torch
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes
    from pytorch3d.utils import cameras_from_opencv_projection

    frames = len(vertices)
    points = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    face_index = torch.as_tensor(faces, dtype=torch.int64, device=device)
    meshes = Meshes(verts=list(points), faces=[face_index] * frames)
    camera_matrix = torch.tensor([[fx, 0.0, cx + 0.5], [0.0, fy, cy + 0.5], [0.0, 0.0, 1.0]], device=device)
    cameras = cameras_from_opencv_projection(
        R=torch.eye(3, device=device).expand(frames, 3, 3), tvec=torch.zeros(frames, 3, device=device),
        camera_matrix=camera_matrix.expand(frames, 3, 3),
        image_size=torch.tensor([[height, width]], device=device).expand(frames, 2))
    # One face per pixel, no blur, both sides of every face (as rays see them). Bins large enough for every face:
    # an overflowing bin would leave holes.
    settings = RasterizationSettings(image_size=(height, width), blur_radius=0.0, faces_per_pixel=1,
                                     cull_backfaces=False, max_faces_per_bin=len(faces))
    fragments = MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)
    packed = fragments.pix_to_face[..., 0]  # indices into the batch's packed faces: frame t's start at t * F
    face_id = torch.where(packed >= 0, packed - torch.arange(frames, device=device)[:, None, None] * len(faces),
                          torch.full_like(packed, -1))
    depth = torch.where(packed >= 0, fragments.zbuf[..., 0], torch.zeros_like(fragments.zbuf[..., 0]))
    return face_id.to(torch.int32).cpu().numpy(), depth.cpu().numpy()
