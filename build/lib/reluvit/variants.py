"""big_vision's model variants (``"S/16"``: a size and a patch), apart from the model code: the SLURM launcher and
the cost estimate read them without importing torch or timm."""

from __future__ import annotations

import re
from dataclasses import dataclass

from reluvit.errors import ArgumentError


@dataclass(frozen=True)
class Size:
    width: int
    depth: int
    mlp_dim: int
    heads: int


# big_vision decode_variant ("Table 2 of arXiv 2106.04560"); "micro", "mini" and "midi" are reluvit's CPU-scale sizes
# for the embedded 28x28 datasets (not big_vision names): micro for CPU sweeps, mini for the demo, the three together
# for the smoke scaling curve (Figure 1).
SIZES: dict[str, Size] = {
    "micro": Size(64, 2, 256, 2),
    "mini": Size(96, 4, 384, 3),
    "midi": Size(128, 6, 512, 4),
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "M": Size(512, 12, 2048, 8),
    "B": Size(768, 12, 3072, 12),
    "L": Size(1024, 24, 4096, 16),
    "H": Size(1280, 32, 5120, 16),
}
_VARIANT = re.compile(r"^([A-Za-z]+)/(\d+)$")


def parse_variant(variant: str) -> tuple[Size, int]:
    """``"S/16"`` -> (the S size, patch 16). Any positive patch size is accepted."""
    match = _VARIANT.match(variant)
    if not match or match.group(1) not in SIZES or int(match.group(2)) < 1:
        raise ArgumentError("variant", f"{variant!r} is not '<size>/<patch>' with size one of: {', '.join(SIZES)}")
    return SIZES[match.group(1)], int(match.group(2))
