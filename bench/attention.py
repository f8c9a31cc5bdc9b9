"""Attention alone at the ViT shapes of the grid: fused relu (Triton) vs SDPA softmax vs unfused relu vs unfused
softmax, forward and forward+backward.

    python bench/attention.py [--tokens 32768] [--dtype bf16] [--repeats 20]

Per shape (S/32, S/16, S/8, B/16, L/16 at 224 and 384 px; gap pooling, so L = patches; d = 64) the batch is
``tokens // L``, so every shape carries about the same number of tokens. TFLOP/s count the two L x L products,
4 B H L^2 d for the forward and 2.5 times that for the backward; peak memory is what one forward+backward
allocates beyond its inputs (CUDA's allocator statistics; not measured on CPU). bf16 on GPU, fp32 on CPU. On CPU
the fused column is absent: the kernel runs there only in Triton's interpreter, whose times mean nothing.
Prints the measurements and their ratios to SDPA softmax, and writes ``results/bench/attention-<device>.csv``.
"""

from __future__ import annotations

import argparse
from functools import partial

import pandas as pd
import torch
import torch.nn.functional as F
from benchlib import device_name, median_seconds, show, write_csv

from reluvit.kernels import fused_pointwise_attention, reference_pointwise_attention
from reluvit.models import parse_variant

SHAPES = [(variant, img) for img in (224, 384) for variant in ("S/32", "S/16", "S/8", "B/16", "L/16")]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REFERENCE = "sdpa softmax"


def implementations(length: int, head_dim: int, device: torch.device) -> dict:
    """name -> f(q, k, v); relu with the paper's L^-1."""
    scale = head_dim**-0.5
    impls = {
        "fused relu": partial(fused_pointwise_attention, activation="relu", length_factor=1 / length),
        REFERENCE: F.scaled_dot_product_attention,
        "unfused relu": partial(reference_pointwise_attention, h=F.relu, scale=scale, length_factor=1 / length),
        "unfused softmax": partial(reference_pointwise_attention, h=partial(torch.softmax, dim=-1), scale=scale,
                                   length_factor=1.0),
    }
    if device.type != "cuda":
        del impls["fused relu"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--tokens", type=int, default=32768 if cuda else 1024, help="batch x L per shape")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16" if cuda else "fp32")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--repeats", type=int, default=20 if cuda else 3)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype]
    name = device_name(device)

    rows = []
    for variant, img in SHAPES:
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
    table = pd.DataFrame(rows)
    show(table, f"attention on {name}, {args.dtype}, {torch.get_num_threads()} CPU threads")

    # speed-ups over SDPA softmax (> 1: faster than softmax) and peak memory relative to it, from the same run
    keys = ["model", "img", "L"]
    base = table[table["impl"] == REFERENCE].set_index(keys)
    ratios = base.reset_index()[keys]
    for impl in table["impl"].unique():
        if impl != REFERENCE:
            other = table[table["impl"] == impl].set_index(keys).reindex(base.index)
            ratios[f"{impl} fwd"] = (base["fwd_ms"] / other["fwd_ms"]).to_numpy()
            ratios[f"{impl} fwd+bwd"] = (base["fwd_bwd_ms"] / other["fwd_bwd_ms"]).to_numpy()
            if cuda:
                ratios[f"{impl} mem"] = (other["peak_mib"] / base["peak_mib"]).to_numpy()
    show(ratios, f"speed-up over {REFERENCE} (> 1: faster){' and peak memory / its' if cuda else ''} on {name}")
    if not cuda:
        print("fused relu: not measured on CPU (the Triton kernel needs CUDA; its CPU interpreter is for tests)")
    print(f"\nwrote {write_csv(table, 'attention', name)}")


if __name__ == "__main__":
    main()
