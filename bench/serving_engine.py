"""Prefix KV engine throughput on the GPU: user-scenario embeddings per second, engine vs naive recompute.

Times `qanchor.suffix_attention` (the exact passes `EmbeddingEngine` runs) on a decoder of the
paper's backbone shape with random weights, against the naive method in the same run: every
(user, scenario) sequence `prefix | suffix` recomputed in full with the decoder's own causal
(flash) attention. The user prefix is given as random input embeddings of `--prefix-tokens`
positions, so the hierarchical encoder (MiniLM over event texts, cached per unique text) is not
part of these figures. Rows:

- naive: full recompute of prefix + suffix per (user, scenario).
- engine, cold users: encode each prefix once, then all S suffixes in one pass.
- engine, cached users: prefix KV already cached (steady-state serving), suffix pass only.
- one more scenario, batch 1: latency of one suffix for one cached user vs one cold prefix encode.
- tuning step (a scenario's soft prompt, forward + backward over `--tuning-batch` users): full
  prefix recompute vs cached prefix KV, on the `--tuning-shape` backbone; and ten scenarios' prompts
  stepped together in one suffix pass (each row holds all ten suffixes), with the time ten
  scenarios x `--tuning-steps` would take at each rate.

Also the largest relative difference between the engine's and naive pooled states (bf16), the
KV bytes per cached user and how many users fit in the free GPU memory.

    python bench/serving_engine.py                       # GPU, qwen2.5-0.5b shape, bf16
    python bench/serving_engine.py --shape tiny --device cpu --dtype fp32 --users 16 --prefix-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

from qanchor.suffix_attention import PrefixBatch, encode_prefixes, suffix_states  # noqa: E402

#: Decoder shapes (token ids are never used: inputs are embeddings, so the vocabulary is kept small).
SHAPES: dict[str, Callable[[], torch.nn.Module]] = {
    "qwen2.5-0.5b": lambda: Qwen2Model(Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, vocab_size=1024,
        attn_implementation="sdpa")),
    "smollm2-135m": lambda: LlamaModel(LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100_000.0, vocab_size=1024,
        attn_implementation="sdpa")),
    "tiny": lambda: LlamaModel(LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, vocab_size=1024, attn_implementation="sdpa")),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_graph(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`fn` captured once in a CUDA graph (fixed shapes), returned as its replay: at batch 1 a decoder
    pass is bound by ~1,000 kernel launches from Python, which a replay removes."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def build(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return SHAPES[shape]().to(device=device, dtype=dtype).eval()


def naive_states(decoder: torch.nn.Module, prefixes: torch.Tensor, blocks: list[torch.Tensor],
                 batch_sequences: int) -> torch.Tensor:
    """[U, S, H] last-token states of every `prefix | suffix`, each sequence run in full (all suffixes
    have the same length here, so no padding is needed and the decoder's causal fast path applies)."""
    users, scenarios = prefixes.shape[0], len(blocks)
    sequences = torch.cat([prefixes.repeat_interleave(scenarios, 0),
                           torch.stack(blocks).repeat(users, 1, 1)], dim=1)
    out = []
    for start in range(0, sequences.shape[0], batch_sequences):
        out.append(decoder(inputs_embeds=sequences[start:start + batch_sequences]).last_hidden_state[:, -1])
    return torch.cat(out).reshape(users, scenarios, -1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def serving_rows(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[list[dict], dict]:
    decoder = build(args.shape, device, dtype)
    hidden = decoder.config.hidden_size
    gen = torch.Generator(device=device).manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * 0.5).to(dtype)

    prefixes = randn(args.users, args.prefix_tokens, hidden)
    lengths = torch.full((args.users,), args.prefix_tokens, device=device)
    blocks = [randn(args.suffix_tokens, hidden) for _ in range(args.scenarios)]
    pairs = args.users * args.scenarios
    rows = []

    with torch.no_grad():
        def naive() -> torch.Tensor:
            return naive_states(decoder, prefixes, blocks, args.naive_batch)

        def encode_all() -> list[PrefixBatch]:
            return [encode_prefixes(decoder, prefixes[i:i + args.batch_users], lengths[i:i + args.batch_users])
                    for i in range(0, args.users, args.batch_users)]

        cached = encode_all()

        def warm() -> list[torch.Tensor]:
            return [suffix_states(decoder, p, blocks) for p in cached]

        def cold() -> list[torch.Tensor]:
            return [suffix_states(decoder, p, blocks) for p in encode_all()]

        check = min(args.users, 8)
        naive_out = naive_states(decoder, prefixes[:check], blocks, args.naive_batch)
        engine_out = suffix_states(decoder, encode_prefixes(decoder, prefixes[:check], lengths[:check]), blocks)
        error = relative_error(engine_out, naive_out)
        exact = build(args.shape, device, torch.float32)  # same seed, same weights, full precision
        reference = naive_states(exact, prefixes[:check].float(), [b.float() for b in blocks], args.naive_batch)
        errors_vs_fp32 = {"naive_vs_fp32": relative_error(naive_out, reference),
                          "engine_vs_fp32": relative_error(engine_out, reference)}
        del exact

        naive_s = median_seconds(naive, device, args.repeats)
        cold_s = median_seconds(cold, device, args.repeats)
        warm_s = median_seconds(warm, device, args.repeats)
        for method, seconds in [("naive full recompute", naive_s), ("engine, cold users", cold_s),
                                ("engine, cached users", warm_s)]:
            rows.append({"measure": method, "seconds": seconds, "user_scenarios_per_s": pairs / seconds,
                         "x_naive": naive_s / seconds})

        one = encode_prefixes(decoder, prefixes[:1], lengths[:1])
        extra_s = median_seconds(lambda: suffix_states(decoder, one, blocks[:1]), device, args.repeats * 4)
        encode_one_s = median_seconds(lambda: encode_prefixes(decoder, prefixes[:1], lengths[:1]), device,
                                      args.repeats * 4)
        rows.append({"measure": "one more scenario, cached user, batch 1", "seconds": extra_s,
                     "x_naive": None, "share_of_cold_encode": extra_s / encode_one_s})
        rows.append({"measure": "cold prefix encode, batch 1", "seconds": encode_one_s})
        if device.type == "cuda":
            extra_g = median_seconds(cuda_graph(lambda: suffix_states(decoder, one, blocks[:1]), device), device,
                                     args.repeats * 10)
            encode_g = median_seconds(cuda_graph(lambda: encode_prefixes(decoder, prefixes[:1], lengths[:1]), device),
                                      device, args.repeats * 10)
            rows.append({"measure": "one more scenario, batch 1, CUDA graph", "seconds": extra_g,
                         "share_of_cold_encode": extra_g / encode_g})
            rows.append({"measure": "cold prefix encode, batch 1, CUDA graph", "seconds": encode_g})

    state = one.unstack()[0]
    meta = {"relative_error_engine_vs_naive": error, **errors_vs_fp32, "kv_bytes_per_user": state.nbytes}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        meta |= {"gpu_free_bytes": free, "gpu_total_bytes": total,
                 "users_per_gpu_at_80pct_free": int(0.8 * free // state.nbytes)}
    return rows, meta


def tuning_rows(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Seconds per prompt-tuning step (forward + backward wrt the soft prompt), full vs cached prefix."""
    decoder = build(args.tuning_shape, device, dtype)
    for p in decoder.parameters():
        p.requires_grad_(False)
    hidden = decoder.config.hidden_size
    gen = torch.Generator(device=device).manual_seed(2)
    users = args.tuning_batch
    prefixes = (torch.randn(users, args.prefix_tokens, hidden, generator=gen, device=device) * 0.5).to(dtype)
    lengths = torch.full((users,), args.prefix_tokens, device=device)
    query = (torch.randn(args.suffix_tokens, hidden, generator=gen, device=device) * 0.5).to(dtype)
    prompt = torch.nn.Parameter((torch.randn(args.prompt_tokens, hidden, generator=gen, device=device) * 0.02).to(dtype))
    with torch.no_grad():
        cached = encode_prefixes(decoder, prefixes, lengths)

    def full_step() -> None:
        prompt.grad = None
        sequences = torch.cat([prefixes, prompt.unsqueeze(0).expand(users, -1, -1),
                               query.unsqueeze(0).expand(users, -1, -1)], dim=1)
        decoder(inputs_embeds=sequences).last_hidden_state[:, -1].float().square().sum().backward()

    def cached_step() -> None:
        prompt.grad = None
        suffix_states(decoder, cached, [torch.cat([prompt, query])])[:, 0].float().square().sum().backward()

    prompts = [torch.nn.Parameter(prompt.detach().clone()) for _ in range(10)]

    def ten_scenarios_step() -> None:
        for p in prompts:
            p.grad = None
        blocks = [torch.cat([p, query]) for p in prompts]
        suffix_states(decoder, cached, blocks).float().square().sum().backward()

    full_s = median_seconds(full_step, device, args.repeats)
    cached_s = median_seconds(cached_step, device, args.repeats)
    joint_s = median_seconds(ten_scenarios_step, device, args.repeats)
    name = f"tuning step {args.tuning_shape} ({users} users)"
    return [{"measure": f"{name}, full prefix", "seconds": full_s, "x_naive": None,
             "projected_10_scenarios_x_steps_s": 10 * args.tuning_steps * full_s},
            {"measure": f"{name}, cached prefix", "seconds": cached_s, "step_speedup": full_s / cached_s,
             "projected_10_scenarios_x_steps_s": 10 * args.tuning_steps * cached_s},
            {"measure": f"{name}, cached prefix, 10 scenarios in one pass", "seconds": joint_s,
             "step_speedup": 10 * full_s / joint_s, "projected_10_scenarios_x_steps_s": args.tuning_steps * joint_s}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--tuning-shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--users", type=int, default=512, help="Users per timed call.")
    parser.add_argument("--batch-users", type=int, default=128, help="Users per engine pass.")
    parser.add_argument("--naive-batch", type=int, default=64, help="Sequences per naive forward.")
    parser.add_argument("--prefix-tokens", type=int, default=720)
    parser.add_argument("--scenarios", type=int, default=10)
    parser.add_argument("--suffix-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=6)
    parser.add_argument("--tuning-batch", type=int, default=64)
    parser.add_argument("--tuning-steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-name", default="serving_engine")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows, meta = serving_rows(args, device, dtype)
    rows += tuning_rows(args, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    emit(args.out_name, rows, {"device": name, "torch": torch.__version__, "shape": args.shape,
                               "dtype": args.dtype, **{k: v for k, v in vars(args).items() if k != "out_name"}, **meta})
    print(f"device: {name}; relative error engine vs naive {meta['relative_error_engine_vs_naive']:.2e}, "
          f"vs an fp32 recompute: engine {meta['engine_vs_fp32']:.2e}, naive {meta['naive_vs_fp32']:.2e}; "
          f"KV {meta['kv_bytes_per_user'] / 2**20:.2f} MiB per cached user"
          + (f"; {meta['users_per_gpu_at_80pct_free']:,} users fit in 80% of free GPU memory"
             if "users_per_gpu_at_80pct_free" in meta else ""))


if __name__ == "__main__":
    main()
