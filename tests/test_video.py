"""Video frame sampling (spec §2.4) and decoding with PyAV, on videos the test makes itself."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from nativevl.data.image import load_image
from nativevl.data.video import VideoError, get_index, load_video, read_frames

LEVEL = 8  # frame i is a flat grey of i * LEVEL, readable after lossy coding


def make_video(path, frames: int = 30, fps: int = 10, size: tuple[int, int] = (64, 48)) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(frames):
            image = np.full((size[1], size[0], 3), i * LEVEL, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def frame_number(image: Image.Image) -> int:
    return round(float(np.asarray(image).mean()) / LEVEL)


def test_get_index_hand_computed():
    # 30 frames at 10 fps, 8 segments: segment 29/8 = 3.625, picks int(1.8125 + round(3.625 k))
    assert get_index(None, 10.0, 29, num_segments=8) == [1, 5, 8, 12, 15, 19, 23, 26]
    # bound 1.0-2.5 s: frames 10..25, segment 1.875; round(7.5) = 8 (half to even)
    assert get_index((1.0, 2.5), 10.0, 29, num_segments=8) == [10, 12, 14, 16, 18, 19, 21, 23]
    # more segments than frames repeat frames; segment 0.5: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2
    assert get_index(None, 25.0, 3, num_segments=6) == [0, 0, 1, 2, 2, 2]


def test_load_video_samples_the_right_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    make_video(path)
    frames = read_frames(path, [26, 1, 1, 15])
    assert [frame_number(f) for f in frames] == [26, 1, 1, 15]
    pixels, patches = load_video(path, num_segments=8)
    assert pixels.shape == (8, 3, 448, 448) and pixels.dtype == torch.float32 and patches == [1] * 8
    # each frame tile is that frame through the image pipeline (one tile, no thumbnail)
    expected = torch.cat([load_image(f, max_num=1) for f in read_frames(path, get_index(None, 10.0, 29, 0, 8))])
    assert torch.equal(pixels, expected)
    mean_grey = (pixels[:, 0] * 0.229 + 0.485).mean(dim=(1, 2)) * 255 / LEVEL
    assert torch.round(mean_grey).long().tolist() == [1, 5, 8, 12, 15, 19, 23, 26]
    _, bounded = load_video(path, num_segments=4, bound=(1.0, 2.5))
    assert bounded == [1] * 4


def test_bad_videos_are_clear_errors(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        load_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video" * 50)
    with pytest.raises(VideoError, match="junk.mp4"):
        load_video(junk)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(VideoError, match="audio.wav: the file has no video stream"):
        load_video(audio)
