"""The training loop for every stage (pre-training, SFT, MPO; the recipe decides data and freezing), on one CPU
or on many GPUs through torchrun + FSDP2.

    nativevl train demo_pretrain --set steps=50            # one process
    torchrun --nproc_per_node 8 -m nativevl train pretrain --set data.meta=meta.json   # FSDP2

A step takes one packed micro-batch from each of its `grad_accum` data shards; shard s of rank r is the stream
of data rank r·A + s of world·A, so the global batch (and the result) does not depend on how it is split
between processes and accumulation. The loss is the global weighted mean (token, sample or square weights).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import LambdaLR

from nativevl.config import IGNORE_INDEX, preset
from nativevl.data.dataset import DataConfig
from nativevl.data.loader import StreamConfig, TrainStream, make_loader
from nativevl.data.packing import PackedBatch
from nativevl.model.internvl import InternVLModel, Output
from nativevl.tokenizer import IM_END, IM_START, load_tokenizer
from nativevl.train import checkpoint as ckpt
from nativevl.train.config import STAGES, TrainConfig, validate  # noqa: F401 - STAGES: its old home
from nativevl.train.losses import (
    RunningMean,
    mpo_loss,
    reduce_denominator,
    sequence_logps,
    token_weights,
)
from nativevl.train.trainable import (
    frozen_linears_to_bf16,
    make_trainable,
    quantize_base,
    read_model,
    uses_lora,
    write_model,
)
from nativevl.weights import SIDECAR_FILES, checkpoint_hash, load_model

log = logging.getLogger("nativevl.train")


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device, backend = torch.device("cuda", local), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(rank, world, device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def cosine_schedule(steps: int, warmup_ratio: float, min_ratio: float):  # noqa: ANN201 - lr multiplier
    warmup = max(1, math.ceil(steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norms, LayerScale, class/position embeddings: no weight decay (as the original's HF Trainer)."""
    return param.ndim < 2 or name.endswith(("class_embedding", "position_embedding"))


def check_inputs(cfg: TrainConfig) -> None:
    """The paths the run reads exist, before any is opened: one message naming every missing one, and where
    `make demo` put the demo recipes' inputs or how to make them."""
    if not cfg.data.meta:
        raise TrainingError("data.meta is not set: give the meta.json of the training data")
    if not (cfg.data.tokenizer or cfg.model.checkpoint):
        raise TrainingError("data.tokenizer is not set and there is no model.checkpoint to take it from")
    if cfg.stage == "mpo" and not cfg.model.checkpoint:
        raise TrainingError("stage mpo needs model.checkpoint: the policy and its reference start from it")
    wanted = {"data.meta": (cfg.data.meta, Path.is_file, "file"),
              "data.tokenizer": (cfg.data.tokenizer, Path.is_dir, "folder"),
              "model.checkpoint": (cfg.model.checkpoint, Path.exists, "folder")}
    missing = {key: (path, kind) for key, (path, exists, kind) in wanted.items() if path and not exists(Path(path))}
    if missing:
        from nativevl.train.recipes import missing_inputs_hint

        hint = missing_inputs_hint({key: path for key, (path, _) in missing.items()})
        raise TrainingError("; ".join(f"{key} = {path}: no such {kind}" for key, (path, kind) in missing.items())
                            + (f". {hint[0].upper()}{hint[1:]}" if hint else ""))


def finished_step(cfg: TrainConfig) -> int | None:
    """The step of a run in `cfg.out` that is already finished (final/ written, its newest valid checkpoint at
    `steps` or beyond), else None. Only verifies a checkpoint whose name says it would count."""
    out = Path(cfg.out)
    if not (cfg.resume and (out / "final").is_dir()):
        return None
    done = [p for p in ckpt.checkpoints(out) if int(p.name.split("-")[1]) >= cfg.steps]
    if not done:
        return None
    folder = ckpt.latest_valid(out)
    step = int(folder.name.split("-")[1]) if folder is not None else -1
    return step if step >= cfg.steps else None


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        validate(cfg)  # a config built in Python (demo, ablations) is checked as load_config's is
        check_inputs(cfg)
        self.cfg = cfg
        self.dist = Dist.from_env()
        self.out = Path(cfg.out)
        self.step = 0
        self.nonfinite_skipped = 0
        self.consecutive_nonfinite = 0
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.tokenizer_dir = Path(cfg.data.tokenizer or cfg.model.checkpoint)
        self.tokenizer = load_tokenizer(self.tokenizer_dir)
        self.model = self._build_model()
        self.base_sha256 = self._base_hash()
        self.data_cfg = DataConfig(
            max_seq_length=cfg.data.max_seq_length, max_dynamic_patch=cfg.data.max_dynamic_patch,
            image_size=cfg.data.image_size, num_image_token=self.model.num_image_token,
            template=self.model.config.template or "internvl2_5", system_message=cfg.data.system_message,
            v2pe=cfg.data.v2pe, v2pe_delta=cfg.data.v2pe_delta, min_num_frame=cfg.data.min_num_frame,
            max_num_frame=cfg.data.max_num_frame)
        self.stream_cfg = StreamConfig(seed=cfg.seed, text_ratio=cfg.data.text_ratio, max_tokens=cfg.data.max_tokens,
                                       max_tiles=cfg.data.max_tiles, pairs=cfg.stage == "mpo")
        # MPO's reference: a frozen copy of the start, or with LoRA the same model with its adapters disabled
        self.reference = self._build_reference() if cfg.stage == "mpo" and not uses_lora(cfg) else None
        self.running = RunningMean()  # MPO's BCO reward shift
        self.check_data()
        self._prepare_model()
        self.optimizer = self._build_optimizer()
        self.scheduler = LambdaLR(self.optimizer, cosine_schedule(cfg.steps, cfg.optim.warmup_ratio,
                                                                  cfg.optim.min_lr_ratio))
        shards = cfg.optim.grad_accum
        self.loaders = [make_loader(self._stream(self.dist.rank * shards + s, self.dist.world * shards),
                                    cfg.data.num_workers) for s in range(shards)]
        if cfg.resume:
            self._resume()

    # --- set-up -----------------------------------------------------------------------------------------------

    def _build_reference(self) -> InternVLModel:
        """MPO's frozen reference: a second copy of the starting checkpoint, in eval mode (no drop path)."""
        reference = load_model(self.cfg.model.checkpoint, dtype=torch.float32).to(self.dist.device)
        reference.requires_grad_(False)
        self._shard(reference)
        return reference.eval()

    def _shard(self, model: InternVLModel) -> None:
        """FSDP2 under torchrun: each ViT layer and each LLM layer is its own unit, the rest the root's."""
        if self.dist.world == 1:
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.dist.device.type, (self.dist.world,))
        for layer in [*model.vision_model.encoder.layers, *model.language_model.model.layers]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

    def _build_model(self) -> InternVLModel:
        spec = self.cfg.model
        if self.cfg.stage == "mpo" and not spec.checkpoint:
            raise TrainingError("stage mpo needs model.checkpoint: the policy and its reference start from it")
        if spec.checkpoint:  # (validate refused model.overrides with a checkpoint)
            model = load_model(spec.checkpoint, dtype=torch.float32)
        else:
            config = preset(spec.preset).replace(**spec.overrides)
            if spec.vocab_from_tokenizer:
                config = config.replace(**{"text.vocab_size": len(self.tokenizer),
                                           "img_context_token_id": self.tokenizer.img_context_id,
                                           "text.eos_token_id": self.tokenizer.im_end_id, "text.bos_token_id": None})
            model = InternVLModel.from_config(config)
        if self.cfg.drop_path_rate:
            rates = torch.linspace(0, self.cfg.drop_path_rate, len(model.vision_model.encoder.layers)).tolist()
            for layer, rate in zip(model.vision_model.encoder.layers, rates, strict=True):
                layer.drop_path1.rate = layer.drop_path2.rate = rate
            model.config.vision.drop_path_rate = self.cfg.drop_path_rate
        # chat and Pipeline tile images as the model was trained (the original writes its data args into the config)
        model.config.max_dynamic_patch = self.cfg.data.max_dynamic_patch
        if spec.quantize:
            quantize_base(model, self.cfg)
        return model.to(self.dist.device)

    def _base_hash(self) -> str | None:
        """The hash a LoRA run records of its base checkpoint (None: no LoRA, or a base built from a preset)."""
        if not (uses_lora(self.cfg) and self.cfg.model.checkpoint):
            return None
        return checkpoint_hash(self.cfg.model.checkpoint)

    def _stream(self, rank: int, world: int) -> TrainStream:
        if not self.cfg.data.meta:
            raise TrainingError("data.meta is not set: give the meta.json of the training data")
        return TrainStream(self.cfg.data.meta, self.tokenizer, self.data_cfg, self.stream_cfg, rank, world)

    def check_data(self, batches: int = 3) -> None:
        """Fail before training, not with a loss of 0: template tokens, model/tokenizer/data agreement, and the
        first batches (every sample learns something, image tokens match the tiles, few records skipped)."""
        tok, model = self.tokenizer, self.model
        for token in (IM_START, IM_END):
            if len(tok.encode(token)) != 1:
                raise TrainingError(f"the tokenizer does not know the chat template token {token} as one token")
        if tok.img_context_id != model.config.img_context_token_id:
            raise TrainingError(f"tokenizer <IMG_CONTEXT> = {tok.img_context_id}, model expects "
                                f"{model.config.img_context_token_id}")
        if len(tok) > model.config.text.vocab_size:
            raise TrainingError(f"the tokenizer has {len(tok)} tokens, the model's vocabulary only "
                                f"{model.config.text.vocab_size}")
        if self.cfg.data.image_size != model.config.vision.image_size:
            raise TrainingError(f"data.image_size {self.cfg.data.image_size} != the ViT's image_size "
                                f"{model.config.vision.image_size}")
        stream = iter(self._stream(0, 1))
        seen = 0
        for _ in range(batches):
            batch = next(stream)
            bounds = batch.cu_seqlens.tolist()
            per_sample = (len(bounds) - 1) // batch.num_samples  # 2 segments per preference pair
            for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                if bool((batch.labels[0, start:end] == IGNORE_INDEX).all()):
                    raise TrainingError(f"{batch.sources[i // per_sample]}: no supervised tokens")
            flags = batch.image_flags if batch.feature_index is None else batch.image_flags[batch.feature_index]
            real_tiles = int(flags.sum())
            context = int((batch.input_ids == tok.img_context_id).sum())
            if context != real_tiles * model.num_image_token:
                raise TrainingError(f"a batch has {context} <IMG_CONTEXT> tokens for {real_tiles} tiles of "
                                    f"{model.num_image_token} tokens ({batch.sources})")
            seen += batch.num_samples
        skipped = sum(batch.skipped.values())
        if skipped > seen:
            raise TrainingError(f"{skipped} of the first {skipped + seen} records were skipped: {batch.skipped}")
        if self.dist.main:
            log.info("data check passed: %d samples in %d batches, %d records skipped", seen, batches, skipped)

    def _prepare_model(self) -> None:
        model = self.model
        make_trainable(model, self.cfg)
        if uses_lora(self.cfg) and self.cfg.precision == "bf16":
            frozen_linears_to_bf16(model)
        full = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
        if self.reference is None and self.cfg.stage == "mpo" and full:
            raise TrainingError(f"stage mpo with LoRA takes the base with its adapters disabled as the reference, "
                                f"so nothing may train in full beside them; these would ({len(full)}: "
                                f"{', '.join(full[:3])}, ...): freeze them (freeze.projector = true, "
                                f"lora.unfreeze_lm_head = false, ...) or train MPO without LoRA")
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError("every parameter is frozen: nothing to train")
        model.vision_model.activation_checkpointing = self.cfg.activation_checkpointing
        model.language_model.activation_checkpointing = self.cfg.activation_checkpointing
        model.train()
        self._shard(model)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups.setdefault((name.startswith("vision_model."), _no_decay(name, param)), []).append(param)
        return torch.optim.AdamW(
            [{"params": params, "lr": o.lr * (o.vision_lr_scale if vit else 1.0),
              "weight_decay": 0.0 if no_decay else o.weight_decay} for (vit, no_decay), params in sorted(groups.items())],
            lr=o.lr, betas=o.betas, eps=o.eps)

    # --- the loop ---------------------------------------------------------------------------------------------

    def _autocast(self):  # noqa: ANN202
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _forward(self, model: InternVLModel, batch: PackedBatch, **loss: Any) -> Output:
        """The packed row through `model`; with `loss` (labels, label_weights, …) the loss is computed in chunks."""
        device = self.dist.device
        index = batch.feature_index.to(device) if batch.feature_index is not None else None
        with self._autocast():
            return model(batch.input_ids.to(device), pixel_values=batch.pixel_values.to(device),
                         image_flags=batch.image_flags.to(device), position_ids=batch.position_ids.to(device),
                         cu_seqlens=batch.cu_seqlens.to(device), feature_index=index, **loss)

    def _lm_losses(self, batches: list[PackedBatch]) -> Iterator[tuple[torch.Tensor, dict[str, float]]]:
        """Next-token loss per micro-batch; their sum is the weighted mean over every rank's micro-batches."""
        device = self.dist.device
        weights = [token_weights(b.labels, b.cu_seqlens, self.cfg.loss_reduction) for b in batches]
        local = torch.stack([w[:, 1:].sum() for w in weights]).sum().to(device)
        denominator = reduce_denominator(local)  # averaged across ranks: see train/losses.py
        for batch, w in zip(batches, weights, strict=True):
            yield self._forward(self.model, batch, labels=batch.labels.to(device), label_weights=w.to(device),
                                loss_denominator=denominator, loss_chunk=self.cfg.loss_chunk).loss, {}

    def _mpo_losses(self, batches: list[PackedBatch]) -> Iterator[tuple[torch.Tensor, dict[str, float]]]:
        """MPO per micro-batch (a packed row of pairs: segments chosen, rejected, chosen, ...), averaged."""
        m, device = self.cfg.mpo, self.dist.device
        for batch in batches:
            labels, cu = batch.labels.to(device), batch.cu_seqlens.to(device)
            logps, counts = sequence_logps(self._forward(self.model, batch).logits, labels, cu)
            with torch.no_grad():
                ref, _ = sequence_logps(self._reference_logits(batch), labels, cu)
            nll = -logps[0::2].sum() / counts[0::2].sum().clamp_min(1)  # token-mean CE of the chosen answers
            loss, stats = mpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], nll, self.running, beta=m.beta,
                                   weights=(m.dpo_weight, m.bco_weight, m.sft_weight))
            yield loss / len(batches), stats

    def _reference_logits(self, batch: PackedBatch) -> torch.Tensor:
        if self.reference is not None:
            return self._forward(self.reference, batch).logits
        from nativevl.weights.lora import adapters_disabled

        self.model.eval()  # as the frozen copy: no drop path, no LoRA dropout
        try:
            with adapters_disabled(self.model):
                return self._forward(self.model, batch).logits
        finally:
            self.model.train()

    def train_step(self, batches: list[PackedBatch]) -> dict[str, float]:
        device = self.dist.device
        total = torch.zeros((), device=device)
        stats: dict[str, float] = {}
        losses = self._mpo_losses(batches) if self.cfg.stage == "mpo" else self._lm_losses(batches)
        for loss, micro in losses:
            loss.backward()
            total += loss.detach()
            for key, value in micro.items():
                stats[key] = stats.get(key, 0.0) + value / len(batches)
        if self.dist.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= self.dist.world
        loss_value = float(total)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skipped += 1
            self.consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss %s, step skipped (%d so far)", self.step + 1, loss_value,
                        self.nonfinite_skipped)
            if self.consecutive_nonfinite >= self.cfg.max_nonfinite:
                raise TrainingError(f"{self.consecutive_nonfinite} non-finite losses in a row at step "
                                    f"{self.step + 1}: lower optim.lr, check the data, or try precision=fp32")
            grad_norm = float("nan")
        else:
            self.consecutive_nonfinite = 0
            max_norm = self.cfg.optim.max_grad_norm
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        lr = self.cfg.optim.lr * self.scheduler.lr_lambdas[0](self.step)  # the base rate (the ViT may scale it)
        self.scheduler.step()
        self.step += 1
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                "tokens": sum(b.num_tokens for b in batches) * self.dist.world,
                "samples": sum(b.num_samples for b in batches) * self.dist.world,
                "efficiency": sum(b.efficiency for b in batches) / len(batches),
                "skipped_records": sum(sum(b.skipped.values()) for b in batches),
                "nonfinite_skipped": self.nonfinite_skipped, **stats}

    def run(self) -> list[dict[str, float]]:
        """Train to `steps`, checkpointing as configured; returns this process's metrics."""
        from nativevl.train.progress import Progress, keep_metrics_until

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            if not cfg.resume:
                self._clear_earlier_run()
            (self.out / "config.toml").write_text(cfg.to_toml())
            dropped = keep_metrics_until(self.out / "metrics.jsonl", self.step)
            if dropped:
                log.info("%s: dropped %d row%s past step %d, left by an earlier run (one row a step)",
                         self.out / "metrics.jsonl", dropped, "" if dropped == 1 else "s", self.step)
        iters = [iter(loader) for loader in self.loaders]
        history: list[dict[str, float]] = []
        progress = Progress(self.out, cfg.steps, self.step, enabled=self.dist.main, bar=cfg.progress)
        start = time.perf_counter()
        while self.step < cfg.steps:
            step_start = time.perf_counter()
            metrics = self.train_step([next(it) for it in iters])
            metrics["step_seconds"] = time.perf_counter() - step_start
            metrics["elapsed"] = time.perf_counter() - start
            history.append(metrics)
            if self.dist.main:
                progress.update(metrics)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        progress.close()
        model_state, _ = self._full_state()  # a collective: every rank takes part
        if self.dist.main:
            self.save_final(model_state)
        return history

    # --- checkpoints ------------------------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=options),
                get_optimizer_state_dict(self.model, self.optimizer, options=options))

    def save(self) -> None:
        model_state, optim_state = self._full_state()  # a collective: every rank takes part
        tmp = self.out / f".step-{self.step:07d}.tmp"
        if self.dist.main:
            tmp = ckpt.begin(self.out, self.step)
        self.dist.barrier()
        if self.dist.main:
            write_model(self.model, model_state, self.cfg, tmp, self.base_sha256)
            self._copy_tokenizer(tmp)
            ckpt.save_optimizer(optim_state, tmp)
            (tmp / "config.toml").write_text(self.cfg.to_toml())
            (tmp / "trainer.json").write_text(json.dumps({
                "step": self.step, "scheduler": self.scheduler.state_dict(),
                "nonfinite_skipped": self.nonfinite_skipped, "mpo_running": self.running.state_dict()}))
        rank_state = {"loaders": [loader.state_dict() for loader in self.loaders],
                      "num_workers": self.cfg.data.num_workers,
                      "python_rng": _jsonable(random.getstate()), "numpy_rng": _jsonable(np.random.get_state())}
        (tmp / f"rank{self.dist.rank}.json").write_text(json.dumps(rank_state))
        save_file(ckpt.rng_state(), tmp / f"rank{self.dist.rank}_rng.safetensors")
        self.dist.barrier()
        if self.dist.main:
            ckpt.commit(tmp, self.out, self.step, self.cfg.keep_last)
        self.dist.barrier()

    def save_final(self, model_state: dict[str, torch.Tensor]) -> None:
        """`out/final`: the model alone (original layout + tokenizer), for `nativevl chat` or the next stage;
        with LoRA the adapter (PEFT's format) naming its base."""
        final, tmp = self.out / "final", self.out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_model(self.model, model_state, self.cfg, tmp, self.base_sha256)
        self._copy_tokenizer(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def _copy_tokenizer(self, folder: Path) -> None:
        for name in SIDECAR_FILES:
            if (self.tokenizer_dir / name).is_file():
                shutil.copy2(self.tokenizer_dir / name, folder / name)

    def _clear_earlier_run(self) -> None:
        """resume=false starts afresh in `out`: an earlier run's checkpoints would otherwise outlive this run's
        (kept past `keep_last`, pruned in its place, or resumed from later)."""
        earlier = ckpt.checkpoints(self.out) + [p for p in (self.out / "final",) if p.is_dir()]
        if earlier:
            log.warning("resume=false: removing %d checkpoint%s of an earlier run in %s (%s)", len(earlier),
                        "" if len(earlier) == 1 else "s", self.out, ", ".join(p.name for p in earlier))
            for folder in earlier:
                shutil.rmtree(folder)

    def _resume(self) -> None:
        folder = ckpt.latest_valid(self.out)
        if folder is None:
            if self.dist.main:
                log.info("no checkpoint in %s, starting fresh", self.out)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        rank_file = folder / f"rank{self.dist.rank}.json"
        if not rank_file.is_file():
            raise TrainingError(f"{folder} was written by a run with another number of processes")
        self._check_base(folder)
        model_state = read_model(self.model, self.cfg, folder)
        # a LoRA checkpoint holds what trains: the frozen base stays as loaded
        set_model_state_dict(self.model, model_state,
                             options=StateDictOptions(full_state_dict=True, strict=not uses_lora(self.cfg)))
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, self.optimizer, ckpt.load_optimizer(folder), options=options)
        trainer = json.loads((folder / "trainer.json").read_text())
        self.step, self.nonfinite_skipped = trainer["step"], trainer["nonfinite_skipped"]
        self.scheduler.load_state_dict(trainer["scheduler"])
        if "mpo_running" in trainer:
            self.running.load_state_dict(trainer["mpo_running"])
        rank_state = json.loads(rank_file.read_text())
        self._check_stream_shape(folder, rank_state)
        for loader, state in zip(self.loaders, rank_state["loaders"], strict=True):
            loader.load_state_dict(state)
        random.setstate(_tuples(rank_state["python_rng"]))
        np.random.set_state(_tuples(rank_state["numpy_rng"]))
        ckpt.set_rng_state(load_file(folder / f"rank{self.dist.rank}_rng.safetensors"))
        if self.dist.main:
            log.info("resumed from %s (step %d)", folder, self.step)


    def _check_base(self, folder: Path) -> None:
        """A LoRA checkpoint resumes only on the base it was trained on."""
        if not uses_lora(self.cfg):
            return
        from nativevl.weights.lora import ADAPTER_BASE, read_adapter_base

        recorded = read_adapter_base(folder).get("base_sha256")
        if recorded != self.base_sha256:
            raise TrainingError(f"{folder / ADAPTER_BASE}: the adapters were trained on another base (base_sha256 "
                                f"{recorded}) than model.checkpoint = {self.cfg.model.checkpoint!r} "
                                f"({self.base_sha256}): resume with that base, or start afresh with resume=false")

    def _check_stream_shape(self, folder: Path, rank_state: dict[str, Any]) -> None:
        """The data order depends on the loader count (grad_accum) and worker count: resuming with others would
        fail deep inside the DataLoader (or replay other samples), so say which setting differs."""
        saved = {"optim.grad_accum": len(rank_state["loaders"]), "data.num_workers": rank_state.get("num_workers")}
        now = {"optim.grad_accum": len(self.loaders), "data.num_workers": self.cfg.data.num_workers}
        for key, value in saved.items():
            if value is not None and value != now[key]:
                raise TrainingError(f"{folder} was written with {key}={value}, this run has {key}={now[key]}: "
                                    f"resume with {key}={value} (the data order depends on it), or start afresh "
                                    f"with resume=false or another out")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def train(cfg: TrainConfig) -> list[dict[str, float]]:
    """Train `cfg`, resuming its run in `cfg.out`; a run already finished there is left as it is ([])."""
    validate(cfg)
    step = finished_step(cfg)
    if step is not None:
        if int(os.environ.get("RANK", "0")) == 0:
            log.info("%s: already finished at step %d (final/ exists); nothing to do (raise steps to train on, or "
                     "set resume=false or another out to train again)", cfg.out, step)
        return []
    return Trainer(cfg).run()
