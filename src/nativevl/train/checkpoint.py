"""Training checkpoints that lose nothing.

A checkpoint is a folder `step-NNNNNNN/` holding the model in the original layout (loadable by
`InternVL.from_pretrained`), the tokenizer, the optimizer state (safetensors + JSON), per-rank trainer state
(data position, RNG states) and the resolved `config.toml`. It is written aside (`.step-NNNNNNN.tmp/`), every
file fsynced, a `manifest.json` with SHA-256 checksums written last, then renamed into place. On resume the
newest checkpoint whose manifest checks out is used; a half-written or corrupted one is reported and skipped.
Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def step_dir(out: Path, step: int) -> Path:
    return out / f"step-{step:07d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def begin(out: Path, step: int) -> Path:
    """A fresh temporary folder for step `step` (a leftover from a killed run is removed)."""
    tmp = out / f".step-{step:07d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, out: Path, step: int, keep_last: int) -> Path:
    """Checksum every file into the manifest, then rename into place and prune old checkpoints."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {"step": step, "files": {p.relative_to(tmp).as_posix(): _sha256(p) for p in files}}
    for p in files:
        _fsync(p)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(tmp / MANIFEST)
    final = step_dir(out, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(out: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first."""
    return sorted(p for p in out.glob("step-*") if p.is_dir()) if out.is_dir() else []


def verify(folder: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def latest_valid(out: Path) -> Path | None:
    """The newest checkpoint that verifies; broken ones are reported and passed over."""
    for folder in reversed(checkpoints(out)):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning("checkpoint %s is unusable (%s); trying the previous one", folder, problem)
    return None


# --- optimizer state without pickle ----------------------------------------------------------------------------


def save_optimizer(state: dict[str, Any], folder: Path) -> None:
    """A (full, FQN-keyed) optimizer state dict: tensors to optimizer.safetensors, the rest to JSON."""
    tensors, scalars = {}, {}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}::{key}"] = value
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[str, dict[str, Any]] = {}
    for flat, tensor in load_file(folder / "optimizer.safetensors").items():
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = tensor
    for flat, value in meta["scalars"].items():
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


# --- RNG states ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
