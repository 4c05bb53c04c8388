"""Pretraining throughput at the paper's backbone shape (GPU; random weights).

Times, in one process and on the same token budget:
  - `hf_causal_lm`: a plain transformers causal-LM step (bf16 autocast, loss on every position),
    the usual baseline;
  - `bare_backbone`: the decoder body forward + backward (no LM head), the ceiling the Q-Anchor
    step is compared with;
  - `qanchor_step`: the full Q-Anchor step: hierarchical encoder -> packed prefix (~720 soft
    tokens) + query + <USER_EMB> + answer, anchor tower with NTP on the answer, semantic tower,
    contrastive loss, backward, fused AdamW;
each eager and, with --compile, with the decoder under torch.compile.

MFU = 6 x non-embedding parameters x tokens/s / peak (989 TFLOP/s dense bf16 for H100/H200 SXM).

    python bench/train_throughput.py [--batch 32] [--steps 20] [--compile] [--sdpa cudnn]
    torchrun --nproc-per-node 2 bench/train_throughput.py --compile --skip-eager   # DDP scaling

Under torchrun each rank also times its steps alone (no communication) in the same run, so the
DDP rows carry a scaling efficiency = per-GPU tokens/s under DDP / per-GPU tokens/s alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

from qanchor.losses import contrastive_loss  # noqa: E402
from qanchor.modality_spec import load_spec  # noqa: E402
from qanchor.model.backbone import EMB_TOKEN, QUERY_TOKEN, USER_TOKEN, Backbone, modality_token, paper_shape_config  # noqa: E402
from qanchor.model.batch import TIME_FEATURES, ModalityBatch  # noqa: E402
from qanchor.model.config import ModelSettings  # noqa: E402
from qanchor.model.modeling import QAnchorModel, round_up  # noqa: E402
from training.distributed import gather_with_grad, init_distributed  # noqa: E402

PEAK_TFLOPS = 989.0
#: Events per modality so the prefix is ~720 tokens (1 user + 6 modality tokens + 713 events).
EVENTS = {"bill": 190, "mini": 140, "spm": 190, "app": 90, "search": 96}
QUERY_TOKENS, ANSWER_TOKENS = 12, 26


def _tokenizer(vocab_size: int, specials: list[str]):
    """A word-level tokenizer built in memory: the timing needs token ids, not a real vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - len(specials) - 2)}
    vocab["<unk>"], vocab["<eos>"] = len(vocab), len(vocab) + 1
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def build(device: torch.device) -> QAnchorModel:
    from transformers import AutoModelForCausalLM

    spec = load_spec()
    spec = spec.model_copy(update={"modalities": tuple(
        m.model_copy(update={"max_events": EVENTS[m.name]}) if m.name in EVENTS else m for m in spec.modalities)})
    config = paper_shape_config()
    specials = [USER_TOKEN, *(modality_token(m) for m in spec.names), QUERY_TOKEN, EMB_TOKEN]
    tokenizer = _tokenizer(config.vocab_size, specials)
    lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    lm.config.use_cache = False
    backbone = Backbone(lm=lm, tokenizer=tokenizer, token_ids={t: tokenizer.convert_tokens_to_ids(t) for t in specials})
    return QAnchorModel(spec, ModelSettings(), backbone).to(device)


def synthetic_batch(net: QAnchorModel, batch: int, device: torch.device, table_rows: int = 20_000):
    g = torch.Generator(device="cpu").manual_seed(0)
    users = {}
    for m in net.spec.modalities:
        n = EVENTS.get(m.name, m.max_events)
        users[m.name] = ModalityBatch(
            ids=torch.randint(1, table_rows, (batch, n), generator=g),
            numeric=torch.randn(batch, n, net.user_encoder.numeric_widths[m.name], generator=g),
            time=torch.rand(batch, n, TIME_FEATURES, generator=g),
            mask=torch.ones(batch, n, dtype=torch.bool)).to(device)
    vocab = net.backbone.tokenizer.vocab_size - 20
    q, e = net.backbone.token_ids[QUERY_TOKEN], net.backbone.token_ids[EMB_TOKEN]
    suffixes = [torch.tensor([q, *torch.randint(0, vocab, (QUERY_TOKENS,), generator=g).tolist(), e]) for _ in range(batch)]
    answers = [torch.cat([torch.randint(0, vocab, (ANSWER_TOKENS,), generator=g), torch.tensor([net.backbone.eos_id])])
               for _ in range(batch)]
    table = F.normalize(torch.randn(table_rows, 384, generator=g), dim=-1).to(device)
    return users, table, suffixes, answers


def _time(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _sdpa_backend(name: str) -> None:
    """Pick SDPA's kernel globally (a context manager would break the compiled graph)."""
    if name == "cudnn":
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(True)
    elif name == "flash":
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="Rows per GPU.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--skip-eager", action="store_true", help="With --compile, time the compiled variant only.")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    parser.add_argument("--sdpa", choices=["default", "flash", "cudnn"], default="default", help="SDPA kernel.")
    parser.add_argument("--hf-batch", type=int, default=None, help="Batch of the HF baseline (its full-vocab logits "
                        "need the most memory); 0 skips it. Default: --batch.")
    parser.add_argument("--profile", choices=["bare", "qanchor"], default=None,
                        help="Print that step's top CUDA ops and stop.")
    args = parser.parse_args()
    d = init_distributed()  # under torchrun: one process per GPU, NCCL
    device = d.device if d.device.type == "cuda" else torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    _sdpa_backend(args.sdpa)
    net = build(device).train()
    decoder = net.decoder
    non_embedding = sum(p.numel() for n, p in net.lm.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    users, table, suffixes, answers = synthetic_batch(net, args.batch, device)
    with torch.no_grad():
        seq_len = net.pack(net.prefix_embeddings(users, table), suffixes, answers).embeds.shape[1]
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5, fused=True)
    ids = torch.randint(0, net.backbone.tokenizer.vocab_size - 20, (args.batch, seq_len), device=device)
    hf_batch = 0 if d.world > 1 else args.batch if args.hf_batch is None else args.hf_batch
    hf_ids = ids[:hf_batch]
    wrapped: dict[str, torch.nn.Module] = {}

    def bucketed_ids() -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled towers pad rows to a length bucket; the bare step runs the same width.
        Throughput counts real tokens only (seq_len per row) in every step."""
        width = round_up(seq_len, net.pad_to_multiple)
        bucketed = torch.randint(0, net.backbone.tokenizer.vocab_size - 20, (args.batch, width), device=device)
        return bucketed, bucketed[:hf_batch]

    def hf_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net.lm(input_ids=hf_ids, labels=hf_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def bare_step(ddp: bool = False) -> None:
        body = wrapped["decoder"] if ddp else decoder
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        hidden.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def qanchor_step(ddp: bool = False) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            anchor, answer, ntp, _ = (wrapped["net"] if ddp else net)(users, table, suffixes, answers)
            if ddp:  # negatives from every rank, as `qanchor pretrain` does
                anchor_all, offset = gather_with_grad(anchor, d)
                answer_all, _ = gather_with_grad(answer, d)
                loss = contrastive_loss(anchor, answer, 0.05, 0.1, anchor_all, answer_all, offset) + ntp
            else:
                loss = contrastive_loss(anchor, answer, 0.05, 0.1) + ntp
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        if args.compile:
            net.compile_decoder(dynamic=False, mode=args.compile_mode)
            decoder = net.decoder
            ids, hf_ids = bucketed_ids()
        step = bare_step if args.profile == "bare" else qanchor_step
        _time(step, 2, args.warmup)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            _time(step, 3, 0)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
        return
    variants = [] if args.compile and args.skip_eager else [("eager", None)]
    if args.compile:
        variants.append(("compiled", dict(dynamic=False, mode=args.compile_mode)))
    rows = []
    for label, compiled in variants:
        if compiled is not None:
            net.compile_decoder(**compiled)  # both Q-Anchor towers
            decoder = net.decoder            # the bare step too
            net.lm.model = decoder           # and the HF causal-LM baseline
            ids, hf_ids = bucketed_ids()
        steps = [("bare_backbone", bare_step, args.batch), ("qanchor_step", qanchor_step, args.batch)]
        if hf_batch:
            steps.insert(0, ("hf_causal_lm", hf_step, hf_batch))
        if d.world > 1:
            # Same processes, same per-GPU batch: each rank alone (no communication) is the
            # baseline, DDP (gradient all-reduce + gathered negatives) is what scales.
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped["decoder"] = DDP(decoder, device_ids=[device.index])
            wrapped["net"] = DDP(net, device_ids=[device.index], find_unused_parameters=True)
            steps += [("bare_backbone_ddp", partial(bare_step, ddp=True), args.batch),
                      ("qanchor_step_ddp", partial(qanchor_step, ddp=True), args.batch)]
        for name, step, batch in steps:
            seconds = _time(step, args.steps, args.warmup)
            tps = batch * seq_len / seconds
            rows.append({"variant": label, "step": name, "gpus": d.world, "batch_per_gpu": batch, "seq_len": seq_len,
                         "padded_len": ids.shape[1],
                         "ms_per_step": seconds * 1000, "tokens_per_s_per_gpu": tps, "tokens_per_s": tps * d.world,
                         "mfu": 6 * non_embedding * tps / (PEAK_TFLOPS * 1e12)})
        by_name = {r["step"]: r for r in rows if r["variant"] == label}
        for r in by_name.values():
            ddp = r["step"].endswith("_ddp")
            bare = by_name["bare_backbone_ddp" if ddp else "bare_backbone"]
            r["vs_bare"] = r["tokens_per_s_per_gpu"] / bare["tokens_per_s_per_gpu"]
            if ddp:  # per-GPU tokens/s under DDP over the same ranks running alone
                alone = by_name[r["step"].removesuffix("_ddp")]
                r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / alone["tokens_per_s_per_gpu"]
    if d.main:
        emit("train_throughput" if d.world == 1 else f"train_throughput_ddp{d.world}", rows,
             {"device": torch.cuda.get_device_name(), "gpus": d.world, "torch": torch.__version__,
              "sdpa": args.sdpa, "compile_mode": args.compile_mode,
              "non_embedding_params": non_embedding, "peak_tflops": PEAK_TFLOPS})
    if d.world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
