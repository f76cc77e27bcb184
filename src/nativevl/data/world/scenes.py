"""Every scene kind, by the `kind` its spec records: `render_scene` draws any spec with its family's renderer (the
samplers are in the family modules: objects, shapes, ocr, charts)."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from .charts import render_chart
from .common import Scene
from .ocr import render_ocr
from .shapes import render_shapes


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image a scene spec describes (deterministic: the same spec always gives the same pixels)."""
    renderers: dict[str, Callable[[Scene], Image.Image]] = {
        "object": render_shapes, "shapes": render_shapes, "ocr": render_ocr, "chart": render_chart}
    return renderers[scene["kind"]](scene)
