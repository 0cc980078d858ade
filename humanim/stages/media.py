"""PyAV, imported once with FFmpeg's own logging off.

PyAV ignores FFmpeg's log messages unless a level is set. Setting one routes every message through a Python
callback that needs the GIL, and a decoder thread logging while the main thread frees the decoder (holding
the GIL) deadlocks; so the level stays unset. Real problems reach us as exceptions and failures rows.
"""
import av
import av.logging


def quiet_ffmpeg() -> None:
    # PySceneDetect's PyAV backend restores FFmpeg's default (verbose, stderr) callback when it opens a
    # video, so the planner calls this again after scene detection.
    av.logging.set_level(None)


quiet_ffmpeg()

__all__ = ["av", "quiet_ffmpeg"]
