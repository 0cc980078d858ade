"""The model store: every weight file a stage loads, by name, with a pinned URL, its sha256 and its licence.

A file is looked for in `$HUMANIM_MODELS`, then in the user cache (`$XDG_CACHE_HOME/humanim/models`, else
`~/.cache/humanim/models`), under its registry name. `resolve` checks the file's sha256 before handing out
its path. `fetch` is the only thing that downloads, and only the driver or the CLI calls it (`humanim models
fetch NAME`): a worker that misses a file fails with an error that says how to get it, it never downloads.

Where no sha256 of a file could be found published, the registry holds None and `fetch` records the hash of
what it downloaded in a lock file beside the files (trust on first use), loudly; `resolve` then checks
against that recorded hash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

from humanim.schemas.keys import file_sha256

logger = logging.getLogger(__name__)

LOCK_FILE = "humanim-models.lock.json"
INSIGHTFACE_LICENCE = (
    "InsightFace pretrained models: NON-COMMERCIAL RESEARCH USE ONLY (insightface model zoo terms; the code is "
    "MIT, these weights are not). Do not use them, or data annotated with them, in a commercial product."
)


@dataclass(frozen=True)
class ModelFile:
    """One weight file of the store. `sha256` and `size` are of the file as stored (the extracted member for
    archives); `archive_sha256` is of the download itself, when it is an archive and its hash is published."""

    name: str
    url: str
    sha256: str | None
    licence: str
    description: str
    size: int | None = None
    member: str | None = None  # file inside the zip at `url`; matched on the end of the member's path
    archive_sha256: str | None = None


def _entries(*files: ModelFile) -> dict[str, ModelFile]:
    return {f.name: f for f in files}


# Hashes come from the file itself where it is in ../shared/assets, otherwise from projects that publish the
# sha256 of the same download (noted per entry); none is made up.
REGISTRY: dict[str, ModelFile] = _entries(
    ModelFile(
        name="yolox_l.onnx",
        description="YOLOX-l COCO person detector (Megvii export, 640x640, raw outputs), as DWPose uses it",
        url="https://huggingface.co/yzd-v/DWPose/resolve/1a7144101628d69ee7a3768d1ee3a094070dc388/yolox_l.onnx",
        # Byte-identical to Megvii's YOLOX 0.1.1rc0 release yolox_l.onnx; sha256 and size as published by
        # several DWPose users and by the YOLOX release's own users.
        sha256="7860ae79de6c89a3c1eb72ae9a2756c0ccfbe04b7791bb5880afabd97855a411",
        size=216_746_733,
        licence="Apache-2.0 (YOLOX, Megvii; hosted by yzd-v/DWPose)",
    ),
    ModelFile(
        name="dw-ll_ucoco_384.onnx",
        description="DWPose-l whole-body 133 keypoints, SimCC, 384x288 (Champ, MimicMotion, MusePose use it)",
        url="https://huggingface.co/yzd-v/DWPose/resolve/1a7144101628d69ee7a3768d1ee3a094070dc388/"
            "dw-ll_ucoco_384.onnx",
        sha256="724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843",
        size=134_399_116,
        licence="Apache-2.0 (IDEA-Research/DWPose)",
    ),
    ModelFile(
        name="rtmw-l_384x288.onnx",
        description="RTMW-l whole-body 133 keypoints (distilled from RTMW-x), SimCC, 384x288",
        url="https://download.openmmlab.com/mmpose/v1/projects/rtmw/onnx_sdk/"
            "rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.zip",
        member="end2end.onnx",
        sha256="bd033156e5104c4f5d2edfe0453e02661e30a2f3da453ec93c8764d561b83054",
        size=229_320_930,
        archive_sha256="a87e1af41a0a067776dba7d46e1c21c8f6e9f18e247e0e606718dd1f31e96ffd",
        licence="Apache-2.0 (OpenMMLab mmpose RTMW)",
    ),
    ModelFile(
        name="rtmw-x_384x288.onnx",
        description="RTMW-x whole-body 133 keypoints, SimCC, 384x288 (rtmlib's 'performance' pose model)",
        url="https://download.openmmlab.com/mmpose/v1/projects/rtmw/onnx_sdk/"
            "rtmw-x_simcc-cocktail13_pt-ucoco_270e-384x288-0949e3a9_20230925.zip",
        member="end2end.onnx",
        # Published by a single project so far (file and archive hashes agree with each other there); a wrong
        # value would stop `fetch` with a hash mismatch, never load a wrong file.
        sha256="b2dd00cce207d3c1503e35cc77a82ecd7092dcbdfe4a3c692ec4cdc3cf40c804",
        archive_sha256="e2635599f6d14152af4bb3e97f90881a782b003857514c76cc341794364ffbdd",
        licence="Apache-2.0 (OpenMMLab mmpose RTMW)",
    ),
    ModelFile(
        name="yolox_nano_humanart.onnx",
        description="YOLOX-nano person detector trained on Human-Art + COCO (416x416, NMS inside)",
        url="https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/onnx_sdk/"
            "yolox_nano_8xb8-300e_humanart-40f6f0d0.zip",
        member="end2end.onnx",
        sha256="1450966de24902b18aada1a78913d7efd8fc8dcd51bd4d0d5591476bd4a38821",
        size=3_722_395,
        archive_sha256=None,  # no published hash of the zip; the extracted file's hash is checked
        licence="Apache-2.0 (OpenMMLab mmpose RTMPose ONNX SDK)",
    ),
    ModelFile(
        name="face_detection_yunet_2026may.onnx",
        description="YuNet face detector (OpenCV Zoo), for cv2.FaceDetectorYN",
        url="https://github.com/opencv/opencv_zoo/raw/47534e27c9851bb1128ccc0102f1145e27f23f98/"
            "models/face_detection_yunet/face_detection_yunet_2026may.onnx",
        sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
        size=229_738,
        licence="MIT (YuNet, Shiqi Yu). Trained on WIDER FACE, whose own terms are non-commercial.",
    ),
    ModelFile(
        name="det_500m.onnx",
        description="SCRFD-500M face detector (insightface buffalo_sc pack)",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_sc.zip",
        member="det_500m.onnx",
        sha256="5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a",
        size=2_524_817,
        archive_sha256="57d31b56b6ffa911c8a73cfc1707c73cab76efe7f13b675a05223bf42de47c72",
        licence=INSIGHTFACE_LICENCE,
    ),
    ModelFile(
        name="det_10g.onnx",
        description="SCRFD-10G face detector (insightface buffalo_l pack)",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        member="det_10g.onnx",
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        size=16_923_827,
        archive_sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        licence=INSIGHTFACE_LICENCE,
    ),
    ModelFile(
        name="w600k_r50.onnx",
        description="ArcFace R50 face recognition, 512-d embeddings (insightface buffalo_l pack)",
        url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        member="w600k_r50.onnx",
        sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        size=174_383_860,
        archive_sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
        licence=INSIGHTFACE_LICENCE,
    ),
)


class ModelStoreError(RuntimeError):
    """A model file that is unknown, missing, corrupt or unpinned; the message says what to do."""


def fetch_command(name: str) -> str:
    return f"humanim models fetch {name}"


def store_dirs() -> list[tuple[Path, str]]:
    """Where files are looked for, in order, each with where that place comes from."""
    dirs = []
    if os.environ.get("HUMANIM_MODELS"):
        dirs.append((Path(os.environ["HUMANIM_MODELS"]).expanduser(), "$HUMANIM_MODELS"))
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    dirs.append((cache_root / "humanim" / "models", "user cache"))
    return dirs


def entry(name: str) -> ModelFile:
    if name not in REGISTRY:
        raise ModelStoreError(f"unknown model file {name!r}; the store knows: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def locate(name: str) -> Path | None:
    """The first file present under `name` in the store's places, unchecked; None when there is none."""
    entry(name)
    for folder, _ in store_dirs():
        if (folder / name).is_file():
            return folder / name
    return None


def _read_lock(folder: Path) -> dict[str, dict]:
    path = folder / LOCK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_sha256(name: str, folder: Path) -> tuple[str | None, str]:
    """The hash a file under `name` in `folder` must have, and where it comes from: 'pinned' or 'lock'."""
    pinned = entry(name).sha256
    if pinned is not None:
        return pinned, "pinned"
    recorded = _read_lock(folder).get(name, {}).get("sha256")
    return recorded, "lock"


# Hashes already checked in this process, by (path, size, mtime): a worker checks a 200 MB file once, not
# once per clip. A file replaced in place gets a new mtime and is checked again.
_verified: dict[tuple[str, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_sha256(path)
    return _verified[key]


def resolve(name: str) -> Path:
    """The path of a present, intact file; a clear ModelStoreError otherwise."""
    path = locate(name)
    if path is None:
        looked = "\n".join(f"  {folder / name}  ({origin})" for folder, origin in store_dirs())
        raise ModelStoreError(
            f"model file {name!r} ({entry(name).description}) is not in the model store. Looked for:\n{looked}\n"
            f"Fetch it with: {fetch_command(name)}")
    want, source = expected_sha256(name, path.parent)
    if want is None:
        raise ModelStoreError(
            f"model file {name!r} at {path} has no pinned sha256 and none recorded in {path.parent / LOCK_FILE}; "
            f"fetch it with `{fetch_command(name)}` so its hash is recorded")
    got = _checked_sha256(path)
    if got != want:
        raise ModelStoreError(
            f"model file {name!r} at {path} is corrupt or not the expected file: its sha256 is {got}, the "
            f"{'registry pins' if source == 'pinned' else 'lock file records'} {want}. Delete it and run: "
            f"{fetch_command(name)}")
    return path


def resolve_name_or_path(name_or_path: str) -> Path:
    """The file a config names: an existing path as given (a user's own file, whose hash build.json records),
    else a model-store name, resolved and checked against its sha256."""
    given = Path(name_or_path).expanduser()
    return given if given.is_file() else resolve(name_or_path)


def describe(names: Iterable[str]) -> list[dict[str, str]]:
    """What a build records of each model file it used (build.json, clip metadata); resolves, so checks."""
    described = []
    for name in names:
        path = resolve(name)
        sha256, source = expected_sha256(name, path.parent)
        described.append({"name": name, "sha256": sha256, "sha256_source": source, "licence": entry(name).licence,
                          "url": entry(name).url, "path": str(path)})
    return described


@dataclass(frozen=True)
class Check:
    name: str
    path: Path
    ok: bool
    message: str


def verify() -> list[Check]:
    """Re-hash every present file of the registry (no cached results) against its pinned or recorded hash."""
    checks = []
    for name in sorted(REGISTRY):
        path = locate(name)
        if path is None:
            continue
        want, source = expected_sha256(name, path.parent)
        got = file_sha256(path)
        if want is None:
            checks.append(Check(name, path, False, f"no pinned or recorded sha256; run {fetch_command(name)}"))
        elif got != want:
            checks.append(Check(name, path, False, f"sha256 {got} differs from the {source} {want}"))
        else:
            checks.append(Check(name, path, True, f"sha256 matches ({source})"))
    return checks


# ---- downloading: the driver and the CLI only ------------------------------------------------------------

def _download(url: str, into: IO[bytes], label: str, progress: bool) -> str:
    """Streams `url` into an open file; returns the sha256 of what came."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "humanim-model-store"})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(label, total=total)
            for block in iter(lambda: response.read(1 << 20), b""):
                into.write(block)
                digest.update(block)
                bar.update(task, advance=len(block))
    return digest.hexdigest()


def _archive_member(archive: zipfile.ZipFile, member: str) -> str:
    matches = [n for n in archive.namelist() if n == member or n.endswith("/" + member)]
    if len(matches) != 1:
        raise ModelStoreError(f"expected exactly one {member!r} in the archive, found {matches or 'none'}")
    return matches[0]


def _write_lock(folder: Path, name: str, model: ModelFile, sha256: str, size: int) -> None:
    lock = _read_lock(folder)
    lock[name] = {"sha256": sha256, "size": size, "url": model.url,
                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        json.dump(lock, handle, indent=2, sort_keys=True)
    os.replace(handle.name, folder / LOCK_FILE)


def fetch(names: Iterable[str], progress: bool = True) -> list[Path]:
    """Downloads the named files into the first store place (`$HUMANIM_MODELS`, else the user cache).

    Every file is checked against its pinned sha256 (and the archive against its own, when published) before
    it is moved into place, so a failed or tampered download never leaves a file under the name. A file
    already present and intact is not downloaded again. An archive serving several files is downloaded once.
    """
    models = [entry(name) for name in names]
    folder = store_dirs()[0][0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as scratch:
        downloads: dict[str, Path] = {}  # url -> downloaded file, within this call
        for model in models:
            target = folder / model.name
            if target.is_file() and expected_sha256(model.name, folder)[0] == file_sha256(target):
                paths.append(target)
                continue
            if model.url not in downloads:
                downloaded = Path(scratch) / f"download-{len(downloads)}"
                try:
                    with open(downloaded, "wb") as handle:
                        got = _download(model.url, handle, model.name, progress)
                except OSError as error:  # urllib's URLError and HTTPError included
                    raise ModelStoreError(f"could not download {model.name} from {model.url}: {error}") from error
                if model.member is not None and model.archive_sha256 not in (None, got):
                    raise ModelStoreError(f"download of {model.url} has sha256 {got}, the registry pins "
                                          f"{model.archive_sha256}; nothing was written")
                downloads[model.url] = downloaded
            staged = Path(scratch) / model.name
            if model.member is None:
                shutil.copyfile(downloads[model.url], staged)
            else:
                with zipfile.ZipFile(downloads[model.url]) as archive:
                    with archive.open(_archive_member(archive, model.member)) as source, open(staged, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
            got = file_sha256(staged)
            if model.sha256 is None:
                logger.warning(
                    "MODEL FILE %s HAS NO PUBLISHED SHA256: recording the hash of what was downloaded (%s) in %s; "
                    "later runs are checked against it, but nobody vouches that this is the file meant",
                    model.name, got, folder / LOCK_FILE)
            elif got != model.sha256:
                raise ModelStoreError(f"{model.name} from {model.url} has sha256 {got}, the registry pins "
                                      f"{model.sha256}; nothing was written")
            size = staged.stat().st_size
            os.replace(staged, target)
            if model.sha256 is None:
                _write_lock(folder, model.name, model, got, size)
            paths.append(target)
    return paths
