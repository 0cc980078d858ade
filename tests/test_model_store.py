"""The model store: lookup order, sha256 checks and their errors, fetching from a local HTTP server, the CLI.

Nothing here reaches the network: real files come from ../shared/assets, downloads from a server on 127.0.0.1
serving entries that the tests add to the registry.
"""
from __future__ import annotations

import hashlib
import http.server
import logging
import os
import shutil
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from humanim.pipeline.models_cli import models
from humanim.stages import model_store
from humanim.stages.model_store import ModelFile, ModelStoreError

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
NANO = "yolox_nano_humanart.onnx"


def asset_model(filename: str) -> Path:
    path = ASSETS / "models" / filename
    if not path.exists():
        pytest.skip(f"{path} absent (shared assets are not in a plain clone)")
    return path


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty $HUMANIM_MODELS, and a user cache of our own (never the real one)."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("HUMANIM_MODELS", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_store, "_verified", {})
    return folder


def test_registry_pins_the_shared_asset_files_by_their_real_hashes():
    for name, filename in ((NANO, "yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"),
                           ("face_detection_yunet_2026may.onnx", "face_detection_yunet_2026may.onnx"),
                           ("det_500m.onnx", "det_500m.onnx")):
        path = asset_model(filename)
        entry = model_store.entry(name)
        assert entry.sha256 == model_store.file_sha256(path)
        assert entry.size == path.stat().st_size


def test_insightface_entries_say_non_commercial_research_only():
    for name in ("det_500m.onnx", "det_10g.onnx", "w600k_r50.onnx"):
        assert "NON-COMMERCIAL RESEARCH USE ONLY" in model_store.entry(name).licence


def test_resolve_finds_a_linked_asset_and_describe_records_its_hash(store):
    (store / NANO).symlink_to(asset_model("yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx"))
    assert model_store.resolve(NANO) == store / NANO
    [described] = model_store.describe([NANO])
    assert described == {"name": NANO, "sha256": model_store.entry(NANO).sha256, "sha256_source": "pinned",
                         "licence": model_store.entry(NANO).licence, "url": model_store.entry(NANO).url,
                         "path": str(store / NANO)}


def test_humanim_models_comes_before_the_user_cache(store, tmp_path):
    source = asset_model("yolox_nano_8xb8-300e_humanart-40f6f0d0.onnx")
    cache = tmp_path / "cache" / "humanim" / "models"
    cache.mkdir(parents=True)
    (cache / NANO).symlink_to(source)
    assert model_store.resolve(NANO) == cache / NANO
    (store / NANO).symlink_to(source)
    assert model_store.resolve(NANO) == store / NANO


def test_user_cache_defaults_to_home_cache_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HUMANIM_MODELS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_store.store_dirs() == [(tmp_path / ".cache" / "humanim" / "models", "user cache")]


def test_missing_file_error_names_the_file_every_place_looked_and_the_fetch_command(store, tmp_path):
    with pytest.raises(ModelStoreError) as raised:
        model_store.resolve("dw-ll_ucoco_384.onnx")
    message = str(raised.value)
    assert "'dw-ll_ucoco_384.onnx'" in message
    assert str(store / "dw-ll_ucoco_384.onnx") in message and "$HUMANIM_MODELS" in message
    assert str(tmp_path / "cache" / "humanim" / "models" / "dw-ll_ucoco_384.onnx") in message
    assert "humanim models fetch dw-ll_ucoco_384.onnx" in message


def test_unknown_name_lists_the_known_ones(store):
    with pytest.raises(ModelStoreError, match="the store knows: .*dw-ll_ucoco_384.onnx"):
        model_store.resolve("dwpose.onnx")


def test_corrupt_copy_is_refused_with_both_hashes_and_the_fetch_command(store):
    data = bytearray(asset_model("face_detection_yunet_2026may.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store / "face_detection_yunet_2026may.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelStoreError) as raised:
        model_store.resolve("face_detection_yunet_2026may.onnx")
    message = str(raised.value)
    assert str(store / "face_detection_yunet_2026may.onnx") in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert model_store.entry("face_detection_yunet_2026may.onnx").sha256 in message
    assert "humanim models fetch face_detection_yunet_2026may.onnx" in message


def test_verification_is_cached_by_size_and_mtime(store, monkeypatch):
    shutil.copyfile(asset_model("face_detection_yunet_2026may.onnx"), store / "face_detection_yunet_2026may.onnx")
    hashed = []
    real_hash = model_store.file_sha256
    monkeypatch.setattr(model_store, "file_sha256", lambda path: hashed.append(path) or real_hash(path))
    for _ in range(3):
        model_store.resolve("face_detection_yunet_2026may.onnx")
    assert len(hashed) == 1
    stat = (store / "face_detection_yunet_2026may.onnx").stat()
    os.utime(store / "face_detection_yunet_2026may.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    model_store.resolve("face_detection_yunet_2026may.onnx")
    assert len(hashed) == 2


# ---- fetching, from a server on 127.0.0.1 -----------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(folder it serves, base URL, list of the paths requested)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []

    class Handler(_QuietHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", requested
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _register(monkeypatch, **fields) -> ModelFile:
    model = ModelFile(licence="test-only", description="a file made by the test", **fields)
    monkeypatch.setitem(model_store.REGISTRY, model.name, model)
    return model


def test_fetch_downloads_checks_and_places_a_plain_file(store, server, monkeypatch):
    served, base, _ = server
    payload = asset_model("face_detection_yunet_2026may.onnx").read_bytes()
    (served / "yunet.onnx").write_bytes(payload)
    _register(monkeypatch, name="served.onnx", url=f"{base}/yunet.onnx", sha256=_sha(payload))
    assert model_store.fetch(["served.onnx"], progress=False) == [store / "served.onnx"]
    assert (store / "served.onnx").read_bytes() == payload
    assert model_store.resolve("served.onnx") == store / "served.onnx"
    assert [p.name for p in store.iterdir()] == ["served.onnx"]  # no temporary left behind


def test_fetch_from_a_file_url(store, tmp_path, monkeypatch):
    payload = b"weights served from disk"
    (tmp_path / "local.bin").write_bytes(payload)
    _register(monkeypatch, name="local.bin", url=(tmp_path / "local.bin").as_uri(), sha256=_sha(payload))
    model_store.fetch(["local.bin"], progress=False)
    assert (store / "local.bin").read_bytes() == payload


def test_fetch_extracts_members_and_downloads_a_shared_archive_once(store, server, monkeypatch):
    served, base, requested = server
    det, rec = b"detector bytes" * 100, b"recogniser bytes" * 100
    with zipfile.ZipFile(served / "pack.zip", "w") as archive:
        archive.writestr("pack/det.onnx", det)
        archive.writestr("pack/rec.onnx", rec)
    archive_sha = _sha((served / "pack.zip").read_bytes())
    _register(monkeypatch, name="det.onnx", url=f"{base}/pack.zip", member="det.onnx", sha256=_sha(det),
              archive_sha256=archive_sha)
    _register(monkeypatch, name="rec.onnx", url=f"{base}/pack.zip", member="rec.onnx", sha256=_sha(rec),
              archive_sha256=archive_sha)
    model_store.fetch(["det.onnx", "rec.onnx"], progress=False)
    assert (store / "det.onnx").read_bytes() == det and (store / "rec.onnx").read_bytes() == rec
    assert requested == ["/pack.zip"]
    model_store.fetch(["det.onnx"], progress=False)  # present and intact: not downloaded again
    assert requested == ["/pack.zip"]


def test_fetch_with_a_wrong_hash_leaves_nothing_under_the_name(store, server, monkeypatch):
    served, base, _ = server
    (served / "tampered.onnx").write_bytes(b"not the pinned bytes")
    _register(monkeypatch, name="tampered.onnx", url=f"{base}/tampered.onnx", sha256="0" * 64)
    with pytest.raises(ModelStoreError, match="registry pins 0{64}; nothing was written"):
        model_store.fetch(["tampered.onnx"], progress=False)
    assert list(store.iterdir()) == []


def test_fetch_of_a_url_the_server_lacks_says_which_file_and_url(store, server, monkeypatch):
    _, base, _ = server
    _register(monkeypatch, name="gone.onnx", url=f"{base}/gone.onnx", sha256="0" * 64)
    with pytest.raises(ModelStoreError, match=f"could not download gone.onnx from {base}/gone.onnx: .*404"):
        model_store.fetch(["gone.onnx"], progress=False)
    assert list(store.iterdir()) == []


def test_fetch_refuses_an_archive_whose_own_hash_differs(store, server, monkeypatch):
    served, base, _ = server
    with zipfile.ZipFile(served / "pack.zip", "w") as archive:
        archive.writestr("det.onnx", b"detector")
    _register(monkeypatch, name="det.onnx", url=f"{base}/pack.zip", member="det.onnx", sha256=_sha(b"detector"),
              archive_sha256="f" * 64)
    with pytest.raises(ModelStoreError, match="registry pins f{64}"):
        model_store.fetch(["det.onnx"], progress=False)
    assert list(store.iterdir()) == []


def test_unpinned_file_gets_its_hash_recorded_loudly_and_checked_afterwards(store, server, monkeypatch, caplog):
    served, base, _ = server
    payload = b"a file nobody published a hash of"
    (served / "unpinned.onnx").write_bytes(payload)
    _register(monkeypatch, name="unpinned.onnx", url=f"{base}/unpinned.onnx", sha256=None)
    (store / "unpinned.onnx").write_bytes(payload)
    with pytest.raises(ModelStoreError, match="no pinned sha256 and none recorded"):
        model_store.resolve("unpinned.onnx")
    (store / "unpinned.onnx").unlink()
    with caplog.at_level(logging.WARNING, logger="humanim.stages.model_store"):
        model_store.fetch(["unpinned.onnx"], progress=False)
    assert "HAS NO PUBLISHED SHA256" in caplog.text and _sha(payload) in caplog.text
    lock = (store / model_store.LOCK_FILE).read_text()
    assert _sha(payload) in lock
    assert model_store.describe(["unpinned.onnx"])[0]["sha256_source"] == "lock"
    (store / "unpinned.onnx").write_bytes(b"changed since")
    with pytest.raises(ModelStoreError, match="the lock file records"):
        model_store.resolve("unpinned.onnx")


# ---- the CLI -------------------------------------------------------------------------------------------------

def test_cli_fetch_list_and_verify(store, server, monkeypatch):
    served, base, _ = server
    payload = b"tiny weights"
    (served / "cli.onnx").write_bytes(payload)
    model = _register(monkeypatch, name="cli.onnx", url=f"{base}/cli.onnx", sha256=_sha(payload))
    runner = CliRunner()

    fetched = runner.invoke(models, ["fetch", "--quiet", "cli.onnx"])
    assert fetched.exit_code == 0, fetched.output
    assert str(store / "cli.onnx") in fetched.output and "licence: test-only" in fetched.output

    listed = runner.invoke(models, ["list"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "cli.onnx" in line)
    assert "yes" in row and "test-only" in row
    assert any("dw-ll_ucoco_384.onnx" in line and " no " in line for line in listed.output.splitlines())

    assert runner.invoke(models, ["verify"]).exit_code == 0
    (store / "cli.onnx").write_bytes(b"bit rot")
    verified = runner.invoke(models, ["verify"])
    assert verified.exit_code == 1
    assert "BAD cli.onnx" in verified.output and "humanim models fetch cli.onnx" in verified.output

    monkeypatch.setitem(model_store.REGISTRY, "cli.onnx", replace(model, sha256="0" * 64))
    (store / "cli.onnx").unlink()
    failed = runner.invoke(models, ["fetch", "--quiet", "cli.onnx"])
    assert failed.exit_code == 1 and "nothing was written" in failed.output


def test_cli_fetch_needs_names_or_all():
    result = CliRunner().invoke(models, ["fetch"])
    assert result.exit_code == 2 and "--all" in result.output
