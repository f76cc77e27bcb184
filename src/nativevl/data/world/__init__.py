"""The embedded synthetic multimodal world: a small, seeded world of shapes, words and bar charts written in the
original InternVL training formats, so that a tiny InternVL can be pre-trained, fine-tuned (SFT), preference-tuned
(MPO) and evaluated in minutes on a CPU.

Call `generate_world(out, seed=0, scale=1.0)`. It writes, under `out`:

- `images/{train,val,test}/{objects,shapes,ocr,charts}/NNNNNN.png`: PIL-drawn PNGs of varied sizes (64..512 px)
  and aspect ratios (1:4..4:1): one large shape (an "object", for colour and shape recognition), coloured shapes
  in a 3x3 grid of places, rendered words / numbers, bar charts.
- `annotations/{pretrain,sft,mpo,eval}/*.jsonl`: one JSON object per line, InternVL's chat format
  (`id`, `image` / `width` / `height` or `image` list / `width_list` / `height_list`, `conversations`), MMPR's
  preference format (`image`, `question`, `chosen`, `rejected`, `answer_gt`) for MPO, and the chat format plus a
  short gold `answer` for the held-out `val` / `test` splits.
- for the ablations (`nativevl ablate`): `annotations/long/` (questions over 2-8 object pictures, "what colour is
  the object in the first picture?", and text conversations of 8-16 turns, both at the training context length),
  `annotations/long_eval/` (the same question over 8, 16 and 32 held-out pictures: prompts about 1x, 2x and 4x as
  long) and `annotations/text_eval/` (held-out text conversations, for perplexity).
- `meta_pretrain.json`, `meta_sft.json`, `meta_mpo.json`, `meta_eval.json`, `meta_long.json`,
  `meta_long_eval.json`, `meta_text_eval.json`: InternVL meta files
  `{name: {root, annotation, data_augment, repeat_time, length, max_dynamic_patch}}`. `root` and `annotation` are
  relative to the meta file's folder (`out`), so the world can be moved and two worlds compare byte for byte; an
  image's full path is `<meta folder>/<root>/<record image>`.
- `tokenizer/`: a Qwen2-style byte-level BPE trained on the world's text (asked for 2000 tokens; the world's
  small vocabulary runs out of merges at about 1150), with InternVL's special tokens at ids 0..12
  (`<IMG_CONTEXT>` = 5); loads with `nativevl.tokenizer.load_tokenizer`.
- `README.md`: what was generated.

Every record with an image keeps a `meta` field with the generator's scene spec and, per question, its task and
gold answer, so answers can be re-derived from the scene (and images re-rendered with `render_scene`). Loaders
ignore extra keys. The same seed gives byte-identical files; val/test scenes never appear in train.

The code, one module per task family, each importing only the ones above it in this list: `common` (vocabulary,
`QA` / `Cot` / `Img`, phrase helpers, random streams, chat records), `canvas` (sizes, textures, font), the families
`objects`, `shapes`, `ocr`, `charts` (scene, drawing, questions), `scenes` (`render_scene`), `reasoning`
(step-by-step answers), `multi` (multi-image), `text` (text-only), `long` (long contexts), `preference` (MPO
pairs), `stages` (the records of each stage), `tokenizer` (the world's BPE) and `layout` (the files, the meta
files, the README; `generate_world`).
"""

from __future__ import annotations

from .common import COLOURS, PAPERS, SHAPES
from .layout import MARKER, STAGES, file_digest, generate_world
from .long import LONG_EVAL_PICTURES, LONG_TRAIN_PICTURES
from .scenes import render_scene

__all__ = ["COLOURS", "LONG_EVAL_PICTURES", "LONG_TRAIN_PICTURES", "MARKER", "PAPERS", "SHAPES", "STAGES",
           "file_digest", "generate_world", "render_scene"]
