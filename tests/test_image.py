"""Image tiling against transformers' GotOcr2ImageProcessorPil (InternVL settings) and the spec's cases."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import reference  # noqa: F401  (sets the offline environment)
import torch
from PIL import Image
from transformers import GotOcr2ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from nativevl.data.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    candidate_grids,
    closest_grid,
    load_image,
)

PROCESSOR = GotOcr2ImageProcessorPil(
    size={"height": 448, "width": 448}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    crop_to_patches=True, min_patches=1, max_patches=12, do_convert_rgb=True,
)


def reference_tiles(image: Image.Image) -> torch.Tensor:
    rgb = Image.fromarray(np.asarray(image.convert("RGB")))  # bare RGB: see hf reference §6.1 on transparency
    return PROCESSOR(images=[rgb], return_tensors="pt", input_data_format="channels_last")["pixel_values"]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_candidate_order_is_the_originals():
    # spec §2.2: the order CPython 3.11 gives the original's set, sorted by tile count
    assert candidate_grids(1, 12) == [
        (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1), (3, 2),
        (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1), (2, 5), (5, 2), (10, 1),
        (1, 10), (11, 1), (1, 11), (12, 1), (3, 4), (4, 3), (1, 12), (6, 2), (2, 6),
    ]


@pytest.mark.parametrize(
    "size, grid",
    [((700, 400), (2, 1)), ((1120, 640), (3, 2)), ((1400, 800), (4, 2)), ((175, 200), (1, 1)), ((700, 800), (2, 2)),
     ((1050, 1200), (3, 4)), ((900, 400), (2, 1)), ((1440, 640), (4, 2)), ((100, 75), (4, 3)), ((800, 600), (4, 3)),
     ((448, 448), (1, 1)), ((1000, 1000), (3, 3))],
)
def test_spec_grid_cases_including_exact_ties(size, grid):
    assert closest_grid(*size, candidate_grids(1, 12), 448) == grid


def test_grid_choice_equals_transformers_on_every_size_up_to_260():
    grids = candidate_grids(1, 12)
    differ = [(w, h) for w in range(1, 261) for h in range(1, 261)
              if closest_grid(w, h, grids, 448) != get_optimal_tiled_canvas((h, w), (448, 448), 1, 12)]
    assert differ == []


SIZES = [(1, 1), (1, 4000), (4000, 1), (448, 448), (449, 448), (448, 449), (700, 400), (1120, 640), (175, 200),
         (7000, 13), (6000, 4000), (2, 3), (913, 17)]


def test_pixels_bit_exact_with_transformers_over_hundreds_of_sizes():
    rng = np.random.default_rng(1)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 300, 2)) for _ in range(200)]
    for i, (w, h) in enumerate(sizes):
        image = noise(w, h, seed=i)
        ours, ref = load_image(image), reference_tiles(image)
        assert ours.dtype == torch.float32 and ours.shape == ref.shape, (w, h)
        assert torch.equal(ours, ref), (w, h)


def test_tile_layout_row_major_then_thumbnail_last():
    image = noise(1344, 896)  # exactly 3 x 2 tiles
    tiles = load_image(image)
    assert tiles.shape == (7, 3, 448, 448)
    array = np.asarray(image)
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    for k in range(6):
        r, c = divmod(k, 3)
        crop = array[r * 448 : (r + 1) * 448, c * 448 : (c + 1) * 448].astype(np.float32) / 255
        expected = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1))
        assert torch.allclose(tiles[k], expected, atol=1e-6)  # no resampling at the exact size
    assert load_image(noise(448, 448)).shape[0] == 1  # one tile: no thumbnail
    assert load_image(image, use_thumbnail=False).shape[0] == 6
    assert load_image(noise(3000, 100), max_num=6).shape[0] == 7


@pytest.mark.parametrize("mode", ["P-transparent", "RGBA", "LA", "CMYK", "I;16", "L", "1"])
def test_image_modes_convert_as_the_original(tmp_path, mode):
    rng = np.random.default_rng(2)
    if mode == "P-transparent":
        image = Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8), "L").convert("P")
        image.info["transparency"] = 7
        path = tmp_path / "p.png"
        image.save(path, transparency=7)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (90, 120), dtype=np.uint16))
        path = tmp_path / "i16.png"
        image.save(path)
    else:
        image = noise(120, 90).convert(mode) if mode != "LA" else noise(120, 90).convert("LA")
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        image.save(path)
    expected = reference_tiles(Image.open(path).convert("RGB"))  # what the original's convert('RGB') gives
    assert torch.equal(load_image(path), expected)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: IHDR, a tiny IDAT and IEND (decoding it would take forever)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_files_are_clear_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    buffer = io.BytesIO()
    noise(300, 300).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(200_000, 200_000))  # 40 gigapixels claimed by a 70-byte file
    big = tmp_path / "big.png"
    noise(1200, 1000).save(big)
    cases = [
        (empty, "the file is empty"),
        (garbage, "not a readable image"),
        (truncated, "truncated or corrupt"),
        (bomb, "pixels"),
        (tmp_path / "missing.png", "no such file"),
    ]
    for path, message in cases:
        with pytest.raises(ImageError, match=message) as e:
            load_image(path)
        assert str(path) in str(e.value)
    with pytest.raises(ImageError, match=r"1200x1000 is 1,200,000 pixels, over the limit of 1,000,000"):
        load_image(big, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="0x5"):
        load_image(Image.new("RGB", (0, 5)))


def test_input_size_can_be_the_model_or_its_config():
    """`load_image(path, input_size=model)` tiles at the model's ViT size (anything with
    .config.vision.image_size, or a config with .vision.image_size); nothing else but an int is taken."""
    from types import SimpleNamespace

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 160, 3), dtype=np.uint8))
    config = SimpleNamespace(vision=SimpleNamespace(image_size=112))
    by_int = load_image(image, input_size=112, max_num=4)
    assert by_int.shape[-2:] == (112, 112)
    assert torch.equal(load_image(image, input_size=SimpleNamespace(config=config), max_num=4), by_int)
    assert torch.equal(load_image(image, input_size=config, max_num=4), by_int)
    with pytest.raises(TypeError, match="tile size in pixels or a model"):
        load_image(image, input_size="448")
    with pytest.raises(ValueError, match="at least 1 pixel"):
        load_image(image, input_size=0)
