"""SOFT vs softmax (and point-wise relu/L) attention: time and memory of one layer as the sequence grows.

    .venv/bin/python bench/soft.py [--device cpu|cuda] [--batch 2] [--repeats 3] [--threads 1]

One S-width layer (384 wide, 6 heads) on L = 49, 196, 784, 3136 tokens (the 7x7 ... 56x56 grids), forward + backward.
SOFT keeps m = 49 landmarks at every L (stride = side / 7, as SOFT's stages), so its cost grows linearly in L;
softmax goes through the fused scaled_dot_product_attention of the grid (quadratic time, but on CPU a flash kernel
that stores no L x L matrix), relu/L materialises its L x L weights. Memory is what the layer saves for its
backward (bytes of the tensors autograd keeps; deterministic, unlike the process's RSS). Prints a table with
ratios measured in this run and writes results/bench/soft-<device>.csv.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from benchlib import device_name, median_seconds, write_csv

from reluvit.attention import attention_layer

SIDES = (7, 14, 28, 56)  # L = 49, 196, 784, 3136
DIM, HEADS = 384, 6
LANDMARK_SIDE = 7


def layers(side: int) -> dict[str, torch.nn.Module]:
    return {
        "softmax": attention_layer(activation="softmax")(DIM, num_heads=HEADS, qkv_bias=True, qk_norm=True),
        "relu/L": attention_layer(activation="relu")(DIM, num_heads=HEADS, qkv_bias=True, qk_norm=True),
        "soft": attention_layer(activation="soft", soft=dict(sr=side // LANDMARK_SIDE))(
            DIM, num_heads=HEADS, qkv_bias=True, qk_norm=True),
    }


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward of ``layer(x)`` (parameters excluded)."""
    params = {p.data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadier on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_name(device)
    rows = []
    for side in SIDES:
        torch.manual_seed(0)
        x = torch.randn(args.batch, side * side, DIM, device=device, requires_grad=True)
        for kind, layer in layers(side).items():
            layer = layer.to(device)
            def fwd_bwd(layer=layer, x=x):
                layer(x).sum().backward()

            rows.append({"device": name, "L": side * side, "attention": kind, "batch": args.batch,
                         "seconds": median_seconds(fwd_bwd, device, warmup=1, repeats=args.repeats),
                         "saved_mb": saved_bytes(layer, x) / 2**20})
    by = {(r["L"], r["attention"]): r for r in rows}
    print(f"{name}, batch {args.batch}, width {DIM}, {HEADS} heads, forward + backward, {args.threads} thread(s); "
          f"SOFT with m = {LANDMARK_SIDE**2} landmarks")
    print(f"{'L':>5} | {'softmax s':>9} {'relu/L s':>9} {'SOFT s':>8} {'SOFT/softmax':>12} | "
          f"{'softmax MB':>10} {'relu/L MB':>10} {'SOFT MB':>8} {'SOFT/softmax':>12} {'SOFT/relu':>9}")
    for side in SIDES:
        n = side * side
        s, r, f = by[n, "softmax"], by[n, "relu/L"], by[n, "soft"]
        print(f"{n:>5} | {s['seconds']:>9.4f} {r['seconds']:>9.4f} {f['seconds']:>8.4f} "
              f"{f['seconds'] / s['seconds']:>12.2f} | {s['saved_mb']:>10.1f} {r['saved_mb']:>10.1f} "
              f"{f['saved_mb']:>8.1f} {f['saved_mb'] / s['saved_mb']:>12.2f} {f['saved_mb'] / r['saved_mb']:>9.2f}")
    print(f"written: {write_csv(pd.DataFrame(rows), 'soft', name)}")

if __name__ == "__main__":
    main()
