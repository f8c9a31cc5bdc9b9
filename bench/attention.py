"""Attention alone at the ViT shapes of the grid: fused relu (Triton) vs SDPA softmax vs unfused relu vs unfused
softmax, forward and forward+backward.

    python bench/attention.py [--tokens 32768] [--dtype bf16] [--repeats 20] [--shapes S/16@224,S/8@224] [--out DIR]

Per shape (S/32, S/16, S/8, B/16, L/16 at 224 and 384 px; gap pooling, so L = patches; d = 64) the batch is
``tokens // L``, so every shape carries about the same number of tokens. TFLOP/s count the two L x L products,
4 B H L^2 d for the forward and 2.5 times that for the backward; peak memory is what one forward+backward
allocates beyond its inputs (CUDA's allocator statistics; not measured on CPU). bf16 on GPU, fp32 on CPU. On CPU
the fused column is absent: the kernel runs there only in Triton's interpreter, whose times mean nothing.
Prints the measurements, their ratios to SDPA softmax and the goals (fused relu forward+backward >= 1.3 x SDPA from
S/16 on, >= 60 % of the GPU's bf16 peak from S/8 on, peak memory <= SDPA's), and writes
``results/bench/attention-<device>.csv`` (``<out>/attention.csv`` with ``--out``), rewritten after every shape.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from benchlib import bf16_peak_tflops, device_name, goal, median_seconds, show, write_csv

from reluvit.kernels import fused_pointwise_attention, reference_pointwise_attention
from reluvit.variants import parse_variant

SHAPES = [(variant, img) for img in (224, 384) for variant in ("S/32", "S/16", "S/8", "B/16", "L/16")]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REFERENCE = "sdpa softmax"
FUSED = "fused relu"
# The goals, at d = 64 in bf16. L counts patches (gap pooling): S/16 at 224 px is L = 196 (197 with a class token),
# S/8 is L = 784.
SPEEDUP_GOAL, SPEEDUP_FROM_L = 1.3, 196  # SDPA's forward+backward time / the fused kernel's
PEAK_GOAL, PEAK_FROM_L = 0.60, 784  # the fused forward+backward's TFLOP/s / the GPU's bf16 peak
GOALS = [(f"fused relu fwd+bwd >= {SPEEDUP_GOAL} x SDPA softmax (bf16, L >= {SPEEDUP_FROM_L})", SPEEDUP_GOAL),
         (f"fused relu fwd+bwd >= {PEAK_GOAL:.0%} of the bf16 peak (L >= {PEAK_FROM_L})", PEAK_GOAL),
         ("fused relu peak memory / SDPA softmax's <= 1", 1.0)]


def implementations(length: int, head_dim: int, device: torch.device) -> dict:
    """name -> f(q, k, v); relu with the paper's L^-1."""
    scale = head_dim**-0.5
    impls = {
        FUSED: partial(fused_pointwise_attention, activation="relu", length_factor=1 / length),
        REFERENCE: F.scaled_dot_product_attention,
        "unfused relu": partial(reference_pointwise_attention, h=F.relu, scale=scale, length_factor=1 / length),
        "unfused softmax": partial(reference_pointwise_attention, h=partial(torch.softmax, dim=-1), scale=scale,
                                   length_factor=1.0),
    }
    if device.type != "cuda":
        del impls[FUSED]
    return impls


def measure(fn, q, k, v, *, warmup: int, repeats: int) -> dict:
    device = q.device
    grad = torch.randn_like(q)

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward():
        torch.autograd.grad(fn(q, k, v), (q, k, v), grad)

    row = {"fwd_ms": 1e3 * median_seconds(forward, device, warmup=warmup, repeats=repeats),
           "fwd_bwd_ms": 1e3 * median_seconds(forward_backward, device, warmup=warmup, repeats=repeats)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward_backward()
        row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return row


def parse_shapes(text: str) -> list[tuple[str, int]]:
    """``S/16@224,S/8@384`` -> [("S/16", 224), ("S/8", 384)]."""
    return [(variant, int(img)) for variant, img in (item.split("@") for item in text.split(","))]


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Per shape, each implementation's speed-up over SDPA softmax (> 1: faster) and, where measured (GPU), its
    peak memory relative to SDPA's, from the same run."""
    keys = ["model", "img", "L"]
    base = table[table["impl"] == REFERENCE].set_index(keys)
    ratios = base.reset_index()[keys]
    for impl in table["impl"].unique():
        if impl != REFERENCE:
            other = table[table["impl"] == impl].set_index(keys).reindex(base.index)
            ratios[f"{impl} fwd"] = (base["fwd_ms"] / other["fwd_ms"]).to_numpy()
            ratios[f"{impl} fwd+bwd"] = (base["fwd_bwd_ms"] / other["fwd_bwd_ms"]).to_numpy()
            if "peak_mib" in table:
                ratios[f"{impl} mem"] = (other["peak_mib"] / base["peak_mib"]).to_numpy()
    return ratios


def _at(row: pd.Series) -> str:
    return f"({row['model']}@{row['img']}, L = {row['L']})"


def goals(table: pd.DataFrame, device: str) -> list[dict]:
    """The fused kernel's goals (bf16, d = 64), each at its worst shape among those it covers."""
    if not (FUSED in set(table["impl"]) and table["dtype"].eq("bf16").all()):
        return [goal(name, None, target, missing="needs the fused kernel in bf16 on a GPU") for name, target in GOALS]
    ratios = speedups(table)
    return [_speedup_goal(ratios), _peak_goal(table, bf16_peak_tflops(device), device), _memory_goal(ratios)]


def _speedup_goal(ratios: pd.DataFrame) -> dict:
    worst = ratios[ratios["L"] >= SPEEDUP_FROM_L].nsmallest(1, f"{FUSED} fwd+bwd")
    if worst.empty:
        return goal(GOALS[0][0], None, SPEEDUP_GOAL, missing=f"no shape with L >= {SPEEDUP_FROM_L}")
    return goal(GOALS[0][0], worst[f"{FUSED} fwd+bwd"].iloc[0], SPEEDUP_GOAL, where=_at(worst.iloc[0]))


def _peak_goal(table: pd.DataFrame, peak: float | None, device: str) -> dict:
    worst = table[(table["impl"] == FUSED) & (table["L"] >= PEAK_FROM_L)].nsmallest(1, "fwd_bwd_tflops")
    if worst.empty or not peak:
        missing = f"no bf16 peak for {device!r} in benchlib" if not peak else f"no shape with L >= {PEAK_FROM_L}"
        return goal(GOALS[1][0], None, PEAK_GOAL, missing=missing)
    tflops = worst["fwd_bwd_tflops"].iloc[0]
    return goal(GOALS[1][0], tflops / peak, PEAK_GOAL, unit="%",
                where=f"{_at(worst.iloc[0])}: {tflops:.0f} of {peak:.0f} TFLOP/s")


def _memory_goal(ratios: pd.DataFrame) -> dict:
    if f"{FUSED} mem" not in ratios:
        return goal(GOALS[2][0], None, 1.0, missing="peak memory is measured on GPU only")
    worst = ratios.nlargest(1, f"{FUSED} mem")
    return goal(GOALS[2][0], worst[f"{FUSED} mem"].iloc[0], 1.0, at_most=True, where=_at(worst.iloc[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--tokens", type=int, default=32768 if cuda else 1024, help="batch x L per shape")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16" if cuda else "fp32")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--repeats", type=int, default=20 if cuda else 3)
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="e.g. S/16@224,S/8@224 (default: all)")
    parser.add_argument("--out", type=Path, help="write attention.csv into this folder instead of results/bench/")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype]
    name = device_name(device)

    rows = []
    for variant, img in args.shapes:
        size, patch = parse_variant(variant)
        length, heads, head_dim = (img // patch) ** 2, size.heads, size.width // size.heads
        batch = max(1, args.tokens // length)
        q, k, v = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        flops = 4 * batch * heads * length**2 * head_dim
        for impl, fn in implementations(length, head_dim, device).items():
            row = measure(fn, q, k, v, warmup=args.warmup, repeats=args.repeats)
            rows.append({"model": variant, "img": img, "batch": batch, "heads": heads, "L": length, "d": head_dim,
                         "dtype": args.dtype, "impl": impl, **row,
                         "fwd_tflops": flops / row["fwd_ms"] / 1e9,
                         "fwd_bwd_tflops": 3.5 * flops / row["fwd_bwd_ms"] / 1e9})
            print(f"{variant}@{img} {impl}: {row}", flush=True)
        path = write_csv(pd.DataFrame(rows), "attention", name, args.out)  # every shape: a cut-off run keeps them
    table = pd.DataFrame(rows)
    show(table, f"attention on {name}, {args.dtype}, {torch.get_num_threads()} CPU threads")
    memory = " and peak memory / its" if cuda else ""
    show(speedups(table), f"speed-up over {REFERENCE} (> 1: faster){memory} on {name}")
    if not cuda:
        print("fused relu: not measured on CPU (the Triton kernel needs CUDA; its CPU interpreter is for tests)")
    show(pd.DataFrame(goals(table, name))[["goal", "measured", "verdict"]], "goals")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
