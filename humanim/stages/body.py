"""The body stage: a body-model fit per clip (stages/fit.py), or SMPL parameters read from 4D-Humans / HMR2
output (stages/body_import.py), stored as the `body` field (BodyFit.to_npz_bytes).

Config keys (section `body`):
- model: anny | smpl | smplx; model_path: the SMPL / SMPL-X file, or a folder holding it (null for Anny);
- iterations: Adam iterations of the fit; score_threshold: keypoints below it are ignored;
- focal: pixels, null to take it from the frame size, or "estimate" to optimise it from there;
- max_error_px: a clip whose mean reprojection error is above it is a bad fit; bad_frame_px: a frame whose
  error is above it counts in the fit_bad_frame_share QA figure;
- on_bad_fit: fail (ClipRejected, a failures row with the reason) | flag (kept; meta `flags` says why);
- device: cpu | cuda;
- import_dir: null, or a folder of 4D-Humans tracking pickles, one per source video (named after the video's
  file stem), read instead of fitting.

A clip in which no frame has enough confident body keypoints is rejected whatever on_bad_fit says: there is
no body to keep.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from humanim.stages.base import Annotations, Clip, ClipRejected, Resources, Stage

BAD_FIT_POLICIES = ("fail", "flag")


@contextmanager
def one_torch_thread():
    """The stage holds one core (`resources`); the fit's tensors are small, and torch's default of a thread per
    core made a 16-frame fit 3.7 times slower on two busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def posed_vertices(model, fit, frames: np.ndarray | None = None) -> np.ndarray:
    """Camera-frame vertices [T, V, 3] of a BodyFit (render_maps draws them with fit.pinhole): of every frame,
    or of the frames indexed by `frames`."""
    import torch

    chosen = slice(None) if frames is None else np.asarray(frames)
    as_tensor = {"dtype": torch.float32, "device": model.device}
    with torch.no_grad():
        out = model(torch.as_tensor(fit.shape, **as_tensor)[None], torch.as_tensor(fit.pose[chosen], **as_tensor),
                    torch.as_tensor(fit.global_orient[chosen], **as_tensor),
                    torch.as_tensor(fit.transl[chosen], **as_tensor))
    return out.vertices.cpu().numpy()


class Body(Stage):
    """Fits (or imports) the clip subject's body model from the `kpts` field; see the module docstring."""

    name = "body"
    version = "1"
    resources = Resources(cpus=1, stateful=True)  # keeps the body model loaded

    def __init__(self, config: dict[str, Any], build_seed: int = 0):
        super().__init__(config, build_seed)
        self.check_environment(config)
        from humanim.stages.body_models import load_body_model
        from humanim.stages.fit import FitSettings

        self.model = load_body_model(config["model"], config["model_path"], device=config["device"])
        focal = config["focal"]
        self.settings = FitSettings(
            iterations=int(config["iterations"]), score_threshold=float(config["score_threshold"]),
            focal=None if focal in (None, "estimate") else float(focal), estimate_focal=focal == "estimate")
        self.max_error_px = float(config["max_error_px"])
        self.bad_frame_px = float(config["bad_frame_px"])
        self.on_bad_fit = config["on_bad_fit"]
        self.import_dir = Path(config["import_dir"]) if config["import_dir"] else None

    @classmethod
    def check_environment(cls, config: dict[str, Any]) -> None:
        if config["on_bad_fit"] not in BAD_FIT_POLICIES:
            raise ValueError(f"unknown body.on_bad_fit {config['on_bad_fit']!r}; choose 'fail' or 'flag'")
        focal = config["focal"]
        if focal is not None and focal != "estimate" and not float(focal) > 0:
            raise ValueError(f"body.focal must be null, 'estimate' or a positive number of pixels, not {focal!r}")
        if config["import_dir"] is not None and config["model"] != "smpl":
            raise ValueError("body.import_dir reads 4D-Humans SMPL parameters: set body.model to 'smpl' (and "
                             "body.model_path to the SMPL file) so that the render stage poses the same model")
        if config["model"] == "anny":
            if config["model_path"] is not None:
                raise ValueError("Anny ships its model in its wheel: body.model_path must be null")
            try:
                import anny  # noqa: F401
            except ImportError as error:
                raise ImportError("the Anny body model needs its package: pip install anny") from error
        elif config["model"] in ("smpl", "smplx"):
            try:
                import smplx  # noqa: F401
            except ImportError as error:
                raise ImportError(f"the {config['model'].upper()} body model needs smplx: pip install smplx") from error
            from humanim.stages.body_models import find_model_file

            find_model_file(config["model"], config["model_path"])  # a missing file says where to get it
        else:
            raise ValueError(f"unknown body.model {config['model']!r}; choose 'anny', 'smpl' or 'smplx'")

    @classmethod
    def model_names(cls, config: dict[str, Any]) -> list[str]:
        if config["model"] == "anny":
            return []  # inside the anny wheel, whose version build.json records
        from humanim.stages.body_models import find_model_file

        return [str(find_model_file(config["model"], config["model_path"]))]

    def __call__(self, clip: Clip) -> Annotations:
        if "kpts" not in clip.fields:
            raise ValueError("the body stage fits the subject's keypoints: put 'pose' before 'body' in `stages`")
        keypoints = clip.fields["kpts"]
        height, width = clip.frames.shape[1:3]
        if self.import_dir is not None:
            fit = self.imported_fit(clip, keypoints, height, width)
        else:
            from humanim.stages.fit import FitFailed, fit_clip

            try:
                with one_torch_thread():
                    fit = fit_clip(keypoints, height, width, self.model, self.settings)
            except FitFailed as error:
                raise ClipRejected(f"body fit impossible: {error}") from error
        return self.annotate(fit)

    def imported_fit(self, clip: Clip, keypoints: np.ndarray, height: int, width: int):
        """The subject's 4D-Humans track over the clip's frames, measured against the clip's keypoints."""
        from humanim.stages import body_import
        from humanim.stages.fit import reprojection_error

        info = clip.meta["source_info"]
        crop_box = clip.meta["stages"]["decode"]["crop_box"]
        try:
            tracks = body_import.person_tracks(
                body_import.load_tracking_results(body_import.tracking_file(self.import_dir, clip.spec.source)))
            track = body_import.choose_track(tracks, clip.spec.source_frame_indices, crop_box, (height, width),
                                             keypoints, self.settings.score_threshold)
            fit = body_import.track_to_fit(track, clip.spec.source_frame_indices, (info["width"], info["height"]),
                                           crop_box, (height, width))
        except (FileNotFoundError, body_import.TrackingFormatError) as error:
            raise ClipRejected(f"body import: {error}") from error
        measured = reprojection_error(self.model, fit, keypoints, self.settings.score_threshold)
        fit.error_px = np.where(np.isnan(fit.error_px), np.nan, measured).astype(np.float32)
        return fit

    def annotate(self, fit) -> Annotations:
        return annotate_fit(fit, self.max_error_px, self.bad_frame_px, self.on_bad_fit)


def annotate_fit(fit, max_error_px: float, bad_frame_px: float, on_bad_fit: str) -> Annotations:
    """The `body` field, metadata and QA of a fit; a bad fit (mean error above max_error_px, or no frame to
    measure it by) raises ClipRejected or is flagged, as on_bad_fit says."""
    seen = np.isfinite(fit.error_px)
    mean_error = float(fit.error_px[seen].mean()) if seen.any() else float("nan")
    bad_share = float((fit.error_px[seen] > bad_frame_px).mean()) if seen.any() else 1.0
    flags = []
    if not mean_error <= max_error_px:  # NaN (no frame measured) is bad too
        reason = (f"body fit error {mean_error:.1f} px is above max_error_px {max_error_px:g}" if seen.any()
                  else "body fit has no frame with confident keypoints to measure it by")
        if on_bad_fit == "fail":
            raise ClipRejected(reason)
        flags.append(reason)
    meta = {"model": fit.model, "focal_source": fit.focal_source, "focal_px": round(float(fit.camera[0]), 3),
            "iterations": int(fit.iterations), "frames_fitted": int(seen.sum()),
            "frames_interpolated": int((~seen).sum()), "flagged": bool(flags), "flags": flags}
    qa = {"fit_bad_frame_share": bad_share}
    if seen.any():
        qa["fit_error_px"] = mean_error
    return Annotations(fields={"body": fit.to_npz_bytes()}, meta=meta, qa=qa)
