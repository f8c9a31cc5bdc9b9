"""ImageNet label sets by WordNet id, and the ImageNet-1k -> ImageNet-21k index mapping.

The lists are timm's package data (sorted WordNet ids, one per line):

* ``imagenet1k``: the 1000 ILSVRC-2012 classes;
* ``imagenet21k_goog``: Google's 21843-class list that big_vision's ``imagenet21k`` uses (= fall11 + n03931044,
  n09859684);
* ``imagenet21k_fall11``: the 21841 classes of the fall 2011 release;
* ``winter21`` has no published list: its 19167 classes are the WordNet ids found in the release itself (the
  shard writer's ``--label-set folder``), recorded in the shards' ``_info.json``.

One ImageNet-1k class, n04399382 (teddy bear), is in neither 21k list, so i1k accuracy of a 21k model can score it
only by a policy (:data:`MISSING_POLICIES`).
"""

from __future__ import annotations

import importlib.resources
from functools import cache

TIMM_LISTS = {
    "imagenet1k": "imagenet_synsets.txt",
    "imagenet21k_goog": "imagenet21k_goog_synsets.txt",
    "imagenet21k_fall11": "imagenet22k_synsets.txt",
}
LABEL_SETS = (*TIMM_LISTS, "folder")
# What happens to the i1k classes a 21k label set lacks: "wrong" = their images always count as errors (the
# paper's most likely scoring; accuracy ceiling 99.9 %), "exclude" = their images leave the denominator.
MISSING_POLICIES = ("wrong", "exclude")


@cache
def wordnet_ids(label_set: str) -> tuple[str, ...]:
    """The WordNet ids of a named label set, in class-index order."""
    if label_set not in TIMM_LISTS:
        raise ValueError(f"label set {label_set!r} is not one of: {', '.join(TIMM_LISTS)} (a 'folder' label set "
                         "lives in the shards' _info.json)")
    text = (importlib.resources.files("timm.data") / "_info" / TIMM_LISTS[label_set]).read_text()
    return tuple(text.split())


def i1k_to_i21k(wnids_21k: tuple[str, ...] | list[str]) -> list[int | None]:
    """For each ImageNet-1k class (in its index order) its index in ``wnids_21k``, or None where it is absent."""
    index = {w: i for i, w in enumerate(wnids_21k)}
    return [index.get(w) for w in wordnet_ids("imagenet1k")]
