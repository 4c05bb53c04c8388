"""`qanchor pretrain`: joint contrastive + next-token pretraining, tracked in MLflow.

One process by default; under `torchrun` every rank trains on its own shard of each global
batch, embeddings are all-gathered *with gradient* so in-batch negatives span all ranks, and
rank 0 alone logs, checkpoints and registers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from qanchor.user_files import read_yaml_model
from qanchor.answer_numbers import answer_numbers
from qanchor.losses import answer_number_loss, contrastive_loss, retrieval_accuracy, uniformity_loss
from qanchor.model import ModelSettings, QAnchor
from qanchor.model.batch import ModalityBatch, collate_users
from training.data import Example, build_examples, example_order, example_rows, question_repeats
from training.example_stream import ExampleSource, StreamedExamples
from training.distributed import Dist, gather_ids, gather_with_grad, init_distributed

CHECKPOINT_DIR = "checkpoints"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSettings(_Config):
    dataset: Path
    feature_repo: Path
    future_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    max_train_examples: int | None = Field(default=None, gt=0)
    #: Pretrain on this many of the train split's users (seeded draw); default all of them.
    max_train_users: int | None = Field(default=None, gt=0)
    val_examples: int = Field(default=256, gt=0)
    #: Held-out retrieval is scored within batches of this many candidates (chance = 1 / size).
    eval_batch_size: int = Field(default=32, ge=2)
    #: Modalities the model reads; default all of the feature repository's spec.
    modalities: list[str] | None = None
    #: Examples of one user placed together in a batch (different questions, same features), so
    #: the same user's other answers are negatives; 1 = examples in plain random order.
    queries_per_user: int = Field(default=1, ge=1, le=16)
    #: Examples of one question placed together in a batch (different users), so a question's
    #: negatives are other users' answers to it; 1 = plain random order. Not with queries_per_user.
    users_per_question: int = Field(default=1, ge=1, le=1024)
    #: Training rows' features are read this many steps at a time (the next chunk while the
    #: current one trains), so memory holds two chunks, not the whole set (~28 KiB per row).
    stream_chunk_steps: int = Field(default=256, ge=1)
    #: Question prefix -> how many times each example whose question starts with it enters an
    #: epoch (first matching prefix wins; others once). Why: in a mixed corpus the few questions
    #: about window-long history ("When did this user last ...") are drowned by the rest, and the
    #: embedding never comes to state them (docs/benchmarks.md, "What the pretraining asks").
    oversample: dict[str, int] = Field(default_factory=dict)
    #: Share of the steps trained in the plain order before `oversample` starts, so the rest of the
    #: corpus keeps the early steps to itself (0: oversampled from the first step).
    oversample_from: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("oversample")
    @classmethod
    def _factors(cls, oversample: dict[str, int]) -> dict[str, int]:
        bad = {p: k for p, k in oversample.items() if not p.strip() or k < 1}
        if bad:
            raise ValueError(f"oversample maps a non-empty question prefix to a factor >= 1, got {bad}")
        return oversample

    @model_validator(mode="after")
    def _one_grouping(self) -> DataSettings:
        if self.queries_per_user > 1 and self.users_per_question > 1:
            raise ValueError("set queries_per_user or users_per_question above 1, not both: a batch is "
                             "grouped by user or by question")
        if self.oversample_from > 0 and not self.oversample:
            raise ValueError("oversample_from delays data.oversample, which is empty: set both or neither")
        return self


class OptimSettings(_Config):
    steps: int = Field(default=300, gt=0)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=1e-3, gt=0.0)
    backbone_lr: float = Field(default=3e-4, gt=0.0)
    #: Learning rate of the hierarchical user encoder (event MLPs, adapters, history pooling);
    #: None = `lr`. A small value keeps the encoders near their random features of the frozen
    #: text embeddings while the rest trains; at 1e-5 it cost 0.013 mean AUC (docs/benchmarks.md),
    #: so the shipped configs leave it unset.
    encoder_lr: float | None = Field(default=None, gt=0.0)
    #: Steps at the start during which the backbone group (the decoder LLM, or its LoRA adapters)
    #: keeps lr 0 while the encoders and projection train; then its own warm-up and cosine begin.
    #: Why: a pretrained LLM adapted from step 0 reads soft tokens that are still random; on
    #: smollm2 600 such LoRA steps lost 0.049 mean AUC against the untrained model (ninth run in
    #: docs/benchmarks.md). 0 = every group trains from the first step.
    backbone_frozen_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    warmup_steps: int = Field(default=20, ge=0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    #: bf16 autocast. Default: on for CUDA only; forced on for a CPU without bf16 units it ran 45 s
    #: a step instead of 3 s (2-core dev machine).
    bf16: bool | None = None
    #: torch.compile the decoder (both towers). Default: on for CUDA, where the full step ran at
    #: 109.8k tokens/s compiled vs 70.4k eager (H100, paper shape, batch 32; docs/benchmarks.md).
    compile: bool | None = None
    #: torch.compile mode. "reduce-overhead" (CUDA graphs) reached 0.82x the bare backbone's
    #: tokens/s vs 0.73x for "default" (H100, docs/benchmarks.md); it captures one graph per
    #: length bucket, so it costs memory per bucket and a longer warm-up.
    compile_mode: str = "default"
    #: Compiled towers round packed widths up to this many tokens, so varying lengths hit a few shapes.
    pad_to_multiple: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _backbone_trains(self) -> OptimSettings:
        if self.backbone_frozen_steps >= self.steps:
            raise ValueError(f"backbone_frozen_steps ({self.backbone_frozen_steps}) must be below steps ({self.steps}): "
                             "the backbone would never train")
        return self


class TrackingSettings(_Config):
    uri: str | None = None
    experiment: str = "qanchor-pretrain"
    register_model: bool = True
    registered_model: str = "qanchor-backbone"
    alias: str = "challenger"


class PretrainConfig(_Config):
    model: ModelSettings = ModelSettings()
    data: DataSettings
    optim: OptimSettings = OptimSettings()
    tracking: TrackingSettings = TrackingSettings()
    seed: int = 0
    output_dir: Path = Path("runs/pretrain")
    checkpoint_every: int = Field(default=100, gt=0)
    log_every: int = Field(default=10, gt=0)


class ConfigError(ValueError):
    """A pretraining config that cannot run; raised before anything is trained or registered."""


def load_config(path: Path) -> PretrainConfig:
    return read_yaml_model(Path(path), "pretraining config", PretrainConfig, ConfigError)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: OptimSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine for every group of `build_optimizer`; the backbone group (the second) first
    waits `backbone_frozen_steps` at lr 0 and then runs its warm-up and cosine over the rest."""
    shared = _lr_lambda(cfg.warmup_steps, cfg.steps)
    frozen = cfg.backbone_frozen_steps
    if not frozen:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, shared)
    late = _lr_lambda(cfg.warmup_steps, cfg.steps - frozen)

    def backbone(step: int) -> float:
        return 0.0 if step < frozen else late(step - frozen)

    lambdas = [shared, backbone] + [shared] * (len(optimizer.param_groups) - 2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def build_optimizer(model: QAnchor, cfg: OptimSettings, fused: bool) -> torch.optim.Optimizer:
    """AdamW over [rest, backbone] (+ [user encoder] with its own `encoder_lr`): without
    `encoder_lr` the groups are the two they always were, so older checkpoints still resume."""
    backbone, encoder, rest = [], [], []
    split_encoder = cfg.encoder_lr is not None
    for name, p in model.network.named_parameters():
        if p.requires_grad:
            group = backbone if name.startswith("lm.") else encoder if split_encoder and name.startswith("user_encoder.") else rest
            group.append(p)
    groups = [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.backbone_lr}]
    if split_encoder:
        groups.append({"params": encoder, "lr": cfg.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused)


def _key(text: str) -> int:
    """A stable 63-bit id of a string (Python's hash() differs between processes, so ranks would disagree)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def row_keys(batch: list[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: an id of its user and of its answer text, for the contrastive loss's masks."""
    users = torch.tensor([_key(e.features.user_id) for e in batch], device=device)
    answers = torch.tensor([_key(e.answer) for e in batch], device=device)
    return users, answers


@dataclass(frozen=True)
class StepBatch:
    """One per-rank batch as the towers read it: collated users on the device, token ids of its
    queries and answers. Built apart from the forward pass so the loop can time the host's share."""

    examples: list[Example]
    users: dict[str, ModalityBatch]
    queries: list[torch.Tensor]
    answers: list[torch.Tensor]
    #: The queries' rows of the text table, for a model with `query_meaning` (else None).
    query_rows: torch.Tensor | None


def collate_step(model: QAnchor, batch: list[Example], device: torch.device) -> StepBatch:
    """The batch's tensors, copied to a CUDA device without waiting for its previous step (pinned
    memory), so the host collates step t+1 while the accelerator still runs step t."""
    net = model.network
    users = collate_users([e.features for e in batch], [e.reference_time for e in batch], net.spec, model.cache)
    cuda = device.type == "cuda"
    queries = [e.query for e in batch]
    rows = model.query_rows(queries)
    return StepBatch(batch, {k: v.to(device, non_blocking=cuda) for k, v in users.items()},
                     net.suffix_ids(queries), net.answer_ids([e.answer for e in batch]),
                     None if rows is None else rows.to(device, non_blocking=cuda))


def step_losses(network: torch.nn.Module, model: QAnchor, step: StepBatch, cfg: PretrainConfig,
                d: Dist) -> dict[str, torch.Tensor]:
    """Both towers and both losses for one per-rank batch; `network` is the model or its DDP wrapper."""
    batch = step.examples
    texts = [e.answer for e in batch]
    anchor, answer, ntp, tokens, numbers = network(step.users, model.cache.table(d.device), step.queries, step.answers,
                                                  step.query_rows)
    anchor_all, offset = gather_with_grad(anchor, d)
    answer_all, _ = gather_with_grad(answer, d)
    users_local, answers_local = row_keys(batch, d.device)
    loss_cfg = cfg.model.loss
    contrastive = contrastive_loss(anchor, answer, loss_cfg.temperature, loss_cfg.margin, anchor_all, answer_all, offset,
                                   users=users_local, users_all=gather_ids(users_local, d),
                                   answers=answers_local, answers_all=gather_ids(answers_local, d),
                                   same_user_negatives=loss_cfg.same_user_negatives)
    total = loss_cfg.contrastive_weight * contrastive + loss_cfg.ntp_weight * ntp
    losses = {}
    if loss_cfg.uniformity_weight > 0:
        losses["uniformity"] = uniformity_loss(anchor_all)
        total = total + loss_cfg.uniformity_weight * losses["uniformity"]
    if numbers is not None:
        values, present = answer_numbers(texts, loss_cfg.number_slots)
        questions = torch.from_numpy(np.unique([e.query for e in batch], return_inverse=True)[1]).to(d.device)
        losses["numbers"] = answer_number_loss(numbers, torch.from_numpy(values).to(d.device),
                                               torch.from_numpy(present).to(d.device), questions)
        total = total + loss_cfg.number_weight * losses["numbers"]
    return {"loss": total, "contrastive": contrastive, "ntp": ntp, **losses, "tokens": tokens.float(),
            "retrieval_acc": retrieval_accuracy(anchor.detach(), answer.detach())}


def retrieval_batch_size(cfg: PretrainConfig, n_val: int) -> int:
    """Candidates per held-out retrieval batch; chance accuracy is its inverse."""
    return min(cfg.data.eval_batch_size, n_val)


@torch.no_grad()
def evaluate_retrieval(model: QAnchor, examples: list[Example], batch_size: int) -> float:
    """Held-out anchor->answer top-1 accuracy within batches of `batch_size` (chance = 1/batch_size)."""
    net = model.network
    net.eval()
    hits, total = 0.0, 0
    for start in range(0, len(examples) - batch_size + 1, batch_size):
        batch = examples[start:start + batch_size]
        anchor = model.anchor_embeddings([e.features for e in batch], [e.reference_time for e in batch],
                                         [e.query for e in batch], paired=True)
        answer = net.semantic_forward(net.answer_ids([e.answer for e in batch]))
        hits += retrieval_accuracy(anchor, answer).item() * len(batch)
        total += len(batch)
    net.train()
    if total == 0:
        raise ValueError(f"need at least {batch_size} held-out examples to measure retrieval accuracy")
    return hits / total


def _save_checkpoint(folder: Path, model: QAnchor, optimizer, scheduler, step: int) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate()},
               tmp / "trainer.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def latest_checkpoint(output_dir: Path) -> Path | None:
    folders = sorted((Path(output_dir) / CHECKPOINT_DIR).glob("step-*"), key=checkpoint_step)
    return folders[-1] if folders else None


def _flatten(prefix: str, value: object, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)
    return out


def _check_rows_per_rank(cfg: PretrainConfig, d: Dist) -> None:
    per_rank = cfg.optim.batch_size // d.world
    if per_rank < 2:
        raise ConfigError(f"batch_size {cfg.optim.batch_size} gives {per_rank} rows per rank on {d.world} ranks; need >= 2")


def fit(model: QAnchor, train: ExampleSource, val: list[Example], cfg: PretrainConfig, d: Dist, *,
        checkpoint: Path | None = None, progress: bool = True,
        log_metrics: Callable[[dict[str, float], int], None] | None = None) -> float:
    """The training loop alone, then held-out retrieval accuracy (rank 0; 0.0 on other ranks).

    It touches no feature store and no tracking server, so it runs wherever examples can be
    built or carried (a GPU node without Feast or MLflow, a benchmark); `pretrain` wraps it with
    both. `checkpoint` resumes weights, optimizer, schedule and RNG state; `log_metrics(metrics,
    step)` is called on rank 0 every `cfg.log_every` steps.
    """
    _check_rows_per_rank(cfg, d)
    model.network.to(d.device).train()
    optimizer = build_optimizer(model, cfg.optim, fused=d.device.type == "cuda")
    scheduler = lr_schedule(optimizer, cfg.optim)
    if cfg.optim.compile if cfg.optim.compile is not None else d.device.type == "cuda":
        model.network.compile_decoder(pad_to_multiple=cfg.optim.pad_to_multiple, mode=cfg.optim.compile_mode)
    network = model.network
    if d.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(model.network, find_unused_parameters=True)
    bf16 = cfg.optim.bf16 if cfg.optim.bf16 is not None else d.device.type == "cuda"
    start_step = 0
    if checkpoint is not None:
        from safetensors.torch import load_model

        load_model(model.network, str(checkpoint / "model" / "model.safetensors"))
        state = torch.load(checkpoint / "trainer.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])

    order = example_order(train.user_ids, cfg.optim.steps * cfg.optim.batch_size, cfg.data.queries_per_user,
                          np.random.default_rng(cfg.seed), questions=train.questions,
                          users_per_question=cfg.data.users_per_question,
                          repeats=question_repeats(train.questions, cfg.data.oversample) if cfg.data.oversample else None,
                          repeats_from=round(cfg.data.oversample_from * cfg.optim.steps) * cfg.optim.batch_size)
    bar = tqdm(range(start_step, cfg.optim.steps), initial=start_step, total=cfg.optim.steps, desc="pretrain",
               disable=not (progress and d.main))
    batches = train.batches(order[start_step * cfg.optim.batch_size:], cfg.optim.batch_size, d.rank, d.world)
    tick, tokens_since, collate_seconds = time.perf_counter(), 0.0, 0.0
    for step, batch in zip(bar, batches):
        collate_start = time.perf_counter()
        inputs = collate_step(model, batch, d.device)
        collate_seconds += time.perf_counter() - collate_start
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = step_losses(network, model, inputs, cfg, d)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.network.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        tokens_since = tokens_since + losses["tokens"].detach()  # a device tensor: no sync per step
        if d.main and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.optim.steps):
            elapsed = time.perf_counter() - tick
            metrics = {k: float(v.detach()) for k, v in losses.items() if k != "tokens"}
            metrics["tokens_per_s"] = float(tokens_since) * d.world / elapsed
            # Wall time in `collate_step` (host work; its copies do not wait): near 1, the accelerator waits for batches.
            metrics["collate_share"] = collate_seconds / elapsed
            metrics["lr"] = scheduler.get_last_lr()[0]
            if log_metrics is not None:
                log_metrics(metrics, step + 1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['retrieval_acc']:.2f}",
                            tok_s=f"{metrics['tokens_per_s']:.0f}", collate=f"{metrics['collate_share']:.0%}")
            tick, tokens_since, collate_seconds = time.perf_counter(), 0.0, 0.0
        if d.main and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.optim.steps:
            _save_checkpoint(Path(cfg.output_dir) / CHECKPOINT_DIR / f"step-{step + 1}", model, optimizer, scheduler, step + 1)
    if not d.main:
        return 0.0
    return evaluate_retrieval(model, val, retrieval_batch_size(cfg, len(val)))


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True, force: bool = False) -> dict:
    """Build examples from Feast, `fit`, then save, log and (rank 0) register. Returns a summary dict.

    Refuses (DriftGateError) while the feature repository's newest drift check failed, unless `force`."""
    from feature_repo.store import UserFeatureStore
    from monitoring.gate import gate_tags, require_passing_check
    from training import registry, tracking

    drift_check = require_passing_check(cfg.data.feature_repo, force, "pretraining")

    d = init_distributed()
    seed_everything(cfg.seed + d.rank)
    _check_rows_per_rank(cfg, d)
    store = UserFeatureStore(cfg.data.feature_repo)
    spec = store.spec
    if cfg.data.modalities is not None:
        unknown = sorted(set(cfg.data.modalities) - set(spec.names))
        if unknown:
            raise ConfigError(f"data.modalities names {unknown}, which the feature repository's spec lacks "
                              f"(it has {list(spec.names)})")
        spec = spec.model_copy(update={"modalities": tuple(m for m in spec.modalities if m.name in cfg.data.modalities)})
    uri = tracking.tracking_uri(cfg.tracking.uri)
    if d.main:
        experiment_id = tracking.open_experiment(uri, cfg.tracking.experiment)
    model = QAnchor.build(spec, cfg.model, seed=cfg.seed)  # raises BackboneError for an unknown preset

    val = build_examples(store, cfg.data.dataset, "val", cfg.data.future_ratio, cfg.data.val_examples, cfg.seed + 1)
    train = StreamedExamples(store, example_rows(cfg.data.dataset, "train", cfg.data.future_ratio,
                                                 cfg.data.max_train_examples, cfg.seed, cfg.data.max_train_users),
                             cfg.data.stream_chunk_steps)
    checkpoint = latest_checkpoint(cfg.output_dir) if resume else None
    run = None
    if d.main:
        run = tracking.mlflow.start_run(experiment_id=experiment_id, log_system_metrics=True)
        tracking.mlflow.log_params({k: v[:500] for k, v in _flatten("", json.loads(cfg.model_dump_json()), {}).items()})
        tracking.mlflow.log_params({"world_size": d.world, "train_examples": len(train), "val_examples": len(val),
                                    "feature_version": store.feature_version, "feature_service": "userU",
                                    "device": str(d.device),
                                    "resumed_from_step": checkpoint_step(checkpoint) if checkpoint else 0})
        tracking.mlflow.set_tags(gate_tags(drift_check, force))
        tracking.mlflow.log_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False), "config.yaml")
    summary: dict = {}
    try:
        accuracy = fit(model, train, val, cfg, d, checkpoint=checkpoint, progress=progress,
                       log_metrics=lambda metrics, step: tracking.mlflow.log_metrics(metrics, step=step))
        if d.main:
            chance = 1 / retrieval_batch_size(cfg, len(val))
            tracking.mlflow.log_metrics({"val_retrieval_acc": accuracy, "val_retrieval_chance": chance})
            final = model.save_pretrained(Path(cfg.output_dir) / "final")
            example = pd.DataFrame({"user_id": ["u"], "features": ["{}"], "query": ["q"], "reference_time": [0]})
            model_uri = tracking.log_backbone(final, example)
            summary = {"run_id": run.info.run_id, "val_retrieval_acc": accuracy, "chance": chance,
                       "model_dir": str(final), "model_uri": model_uri}
            if cfg.tracking.register_model:
                summary["version"] = registry.register(model_uri, cfg.tracking.registered_model, cfg.tracking.alias, {
                    "feature_version": store.feature_version, "backbone": cfg.model.backbone.name,
                    "val_retrieval_acc": f"{accuracy:.4f}"},
                    on_version=lambda version: {"feature_service": store.register_backbone(version, list(spec.names))})
    finally:
        if run is not None:
            tracking.mlflow.end_run()
        if d.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return summary
