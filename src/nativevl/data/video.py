"""Video to frame tiles, as the original inference `load_video` (spec §2.4), decoded with PyAV.

`num_segments` frames are taken at the centres of equal segments of the clip (optionally bounded in seconds);
each frame becomes one 448-px tile (dynamic tiling with max_num=1, so no thumbnail).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nativevl.data.image import dynamic_preprocess, normalize


class VideoError(ValueError):
    """A video that cannot be used; the message names the file."""


def get_index(
    bound: tuple[float, float] | None, fps: float, max_frame: int, first_idx: int = 0, num_segments: int = 32
) -> list[int]:
    """Frame indices at the centres of `num_segments` equal segments of [start, end] (seconds, or the whole
    clip). Python's round (half to even) and int truncation, as the original."""
    start, end = bound if bound is not None else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    segment = float(end_idx - start_idx) / num_segments
    return [int(start_idx + segment / 2 + round(segment * k)) for k in range(num_segments)]


def _open(path: Path):  # noqa: ANN202 - an av container
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    return container


def _frame_count(path: Path) -> tuple[int, float]:
    """(number of frames, average fps); counts packets when the container does not say."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        count = stream.frames
        if count <= 0:
            try:
                count = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as e:
                raise VideoError(f"{path}: cannot read the video stream ({e})") from None
    if count <= 0 or fps <= 0:
        raise VideoError(f"{path}: the video has {count} frames at {fps} fps")
    return count, fps


def read_frames(path: str | Path, indices: list[int]):  # noqa: ANN201 - list of PIL images
    """Decode the frames at `indices` (repeats allowed) as RGB PIL images, in the order asked."""
    import av

    path = Path(path)
    wanted = sorted(set(indices))
    found = {}
    with _open(path) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    found[i] = frame.to_image().convert("RGB")
                if i >= wanted[-1]:
                    break
        except av.FFmpegError as e:
            raise VideoError(f"{path}: corrupt video data ({e})") from None
    missing = [i for i in wanted if i not in found]
    if missing:
        raise VideoError(f"{path}: frames {missing[:5]} could not be decoded ({len(found)} of {len(wanted)} read)")
    return [found[i] for i in indices]


def load_video(
    path: str | Path,
    num_segments: int = 8,
    bound: tuple[float, float] | None = None,
    input_size: int = 448,
    max_num: int = 1,
) -> tuple[torch.Tensor, list[int]]:
    """(pixel_values (tiles, 3, S, S) float32, tiles per frame) for `num_segments` sampled frames."""
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    path = Path(path)
    count, fps = _frame_count(path)
    indices = get_index(bound, fps, count - 1, first_idx=0, num_segments=num_segments)
    tiles, num_patches = [], []
    for frame in read_frames(path, indices):
        frame_tiles = dynamic_preprocess(frame, image_size=input_size, use_thumbnail=True, max_num=max_num)
        tiles.append(normalize(frame_tiles, input_size))
        num_patches.append(len(frame_tiles))
    return torch.cat(tiles), num_patches
