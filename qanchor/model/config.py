"""Model and loss configuration: every knob that changes the embedding is a logged config value."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Named backbones; anything else must be a local directory or an "org/name" hub id.
BACKBONE_PRESETS = ("tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-0.5b-shape")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Config):
    """Low-rank adapters on the backbone's attention/MLP projections (for large backbones)."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class BackboneSettings(_Config):
    """Which decoder LLM: a preset name (`tiny`, `smollm2-135m`, `qwen2.5-0.5b`) or a local HF directory."""

    name: str = "tiny"
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    lora: LoraSettings | None = None
    #: Hub ids are only resolved from the local cache unless this is set: no network at run time.
    allow_download: bool = False
    #: `tiny` scaled up (its width and depth; heads of 32 dims, half as many KV heads, MLP 3x wide):
    #: the backbone-size curve needs a random-init decoder between 2 x 128 and a real LLM.
    hidden_size: int | None = Field(default=None, ge=64, le=2048, multiple_of=64)
    num_hidden_layers: int | None = Field(default=None, ge=1, le=48)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name in BACKBONE_PRESETS or Path(name).is_dir() or (name.count("/") == 1 and not name.startswith((".", "/"))):
            return name
        raise ValueError(f"unknown backbone {name!r}: use one of {list(BACKBONE_PRESETS)}, a local model directory "
                         "or an org/name hub id")

    @model_validator(mode="after")
    def _shape_only_for_tiny(self) -> BackboneSettings:
        if self.name != "tiny" and (self.hidden_size is not None or self.num_hidden_layers is not None):
            raise ValueError(f"hidden_size and num_hidden_layers resize the random-init `tiny` backbone; "
                             f"{self.name!r} brings its own shape")
        return self


class LossSettings(_Config):
    """Joint objective: InfoNCE with the false-negative mask m_ij = 1[s_ij <= s_ii + margin] plus NTP."""

    temperature: float = Field(default=0.05, gt=0.0)
    margin: float = Field(default=0.1, ge=0.0)
    contrastive_weight: float = Field(default=1.0, ge=0.0)
    ntp_weight: float = Field(default=1.0, ge=0.0)
    #: Keep a user's rows under other queries as negatives even when they score above the
    #: margin (see `qanchor.losses`); only matters when batches group users (`queries_per_user`).
    same_user_negatives: bool = True
    #: Weight of `qanchor.losses.uniformity_loss` on the (all-gathered) anchors; 0 = the paper's
    #: objective. Spreads users apart under the same query (for prototypes and cosine search).
    uniformity_weight: float = Field(default=0.0, ge=0.0)
    #: What the NTP answer is decoded from. `sequence` (the paper): the answer follows `<USER_EMB>`
    #: in the anchor sequence and attends to the query and every prefix token directly, so the
    #: embedding itself need not hold it. `embedding`: the answer is decoded from the L2-normalised
    #: embedding alone (a linear bridge into one input token), so every fact the answer states
    #: ("37 days ago") must be in the vector the scenarios read, under the question asked.
    ntp_input: Literal["sequence", "embedding"] = "sequence"
    #: Weight of `qanchor.losses.answer_number_loss`: a linear head's reading of the embedding must
    #: correlate with the answer's first `number_slots` numbers (log1p; `qanchor.answer_numbers`)
    #: among the batch's rows of the same question. 0 = the paper's objective, and no head is built.
    number_weight: float = Field(default=0.0, ge=0.0)
    number_slots: int = Field(default=4, gt=0, le=16)


class ModelSettings(_Config):
    backbone: BackboneSettings = BackboneSettings()
    embed_dim: int = Field(default=128, gt=0)
    event_hidden: int = Field(default=256, gt=0)
    max_query_tokens: int = Field(default=48, gt=0)
    max_answer_tokens: int = Field(default=96, gt=0)
    #: The [USER] and [MOD_m] summary tokens in front of the events; off only for the paper's
    #: "without modality/user tokens" ablation.
    summary_tokens: bool = True
    #: One `[HIST_m]` token per modality summarising every event of its window (the history
    #: feature view), so what falls off the last `max_events` events still reaches the model.
    history_tokens: bool = True
    #: History tokens per modality. 0 (default): one token, the mean and max of its kind vectors
    #: pooled. k > 0: k learned slot queries attend over the modality's kinds (pooling by
    #: attention), so one slot could hold a single rare kind's recency that a mean washes out.
    #: Measured on the GPU (docs/benchmarks.md) it did not help and crowded users together, so
    #: it stays opt-in. The slots read only the user's features: the prefix stays cacheable.
    history_slots: int = Field(default=0, ge=0, le=16)
    #: Each history modality's k most frequent kinds also enter the prefix as their own tokens
    #: (`[KIND]`: the kind's text with its window counts, recency and sums), besides the pooled
    #: `[HIST_m]`. A question naming one kind ("when did this user last pay a quarterly plan?")
    #: can then attend to that kind's row, which no single pooled vector can hold for every kind
    #: at once. 0 = off. Costs up to k tokens per history modality in the prefix (the user's kinds
    #: only, so fewer for most users); they come from the features alone, so the prefix stays cacheable.
    history_kind_tokens: int = Field(default=0, ge=0, le=64)
    #: Each history modality's kinds are also hashed (CRC-32 of the kind's text) into this many
    #: fixed buckets, and an MLP over the bucket table (counts, sums, recency per bucket) adds to
    #: its `[HIST_m]` token (`qanchor.model.modeling.KindBuckets`): one kind's recency sits at a
    #: fixed input coordinate instead of being picked out of a set by its text. 0 = off. Adds no
    #: prefix tokens; reads the features alone, so the prefix stays cacheable.
    history_buckets: int = Field(default=0, ge=0, le=1024)
    #: The `<USER_EMB>` state also attends over the user's summary tokens before the projection
    #: (`qanchor.model.modeling.SummaryReadout`), so the query can pick out a modality's or a
    #: history's summary instead of reading it through the decoder's mix of every prefix token.
    summary_readout: bool = False
    #: The query's sentence embedding (the frozen MiniLM that encodes event texts) enters the
    #: `<USER_EMB>` input through a small MLP (`qanchor.model.modeling.QueryMeaning`), beside the
    #: query's own tokens. Why: a random-init decoder learns its word embeddings from the few
    #: hundred pretraining questions only, so a scenario query in words it never saw (a task
    #: definition, a paraphrase) reaches it as noise; the sentence encoder places "takes a cash
    #: advance" next to the pretraining question about cash advances. Per query, not per user:
    #: the prefix and its cache are unchanged.
    query_meaning: bool = False
    #: Each numeric profile field's value (signed log) enters its profile token beside the
    #: field's text. Why: event texts are digit-masked before the sentence encoder, so "age: 37"
    #: reads "age: #" and, without this, no age, income, credit limit or city tier reaches the
    #: model at all, while every LightGBM baseline reads them. Off by default so that models
    #: saved before it load and embed exactly as they did.
    profile_values: bool = False
    loss: LossSettings = LossSettings()

    @model_validator(mode="after")
    def _history_options_need_history(self) -> ModelSettings:
        options = {name: getattr(self, name) for name in ("history_slots", "history_kind_tokens", "history_buckets")}
        used = [f"{name}: {value}" for name, value in options.items() if value]
        if used and not self.history_tokens:
            raise ValueError(f"{', '.join(used)} shape the history tokens, which history_tokens: false turns off")
        return self
