"""PyAV, imported once with FFmpeg's own logging turned down to errors.

x264 and the demuxers print statistics at info level for every clip; in a build they would bury the
progress bar, and every real problem already reaches the failures table.
"""
import av
import av.logging


def quiet_ffmpeg() -> None:
    # PySceneDetect's PyAV backend restores FFmpeg's default (verbose) callback when it opens a video,
    # so the planner calls this again after scene detection.
    av.logging.set_level(av.logging.ERROR)


quiet_ffmpeg()

__all__ = ["av", "quiet_ffmpeg"]
