"""Evaluation as the paper does it (paper.md §5): ImageNet-1k accuracy of ImageNet-21k models (:mod:`.i1k`) and
big_vision's few-shot linear probe (:mod:`.fewshot`, :mod:`.ridge`) on the transfer sets (:mod:`.transfer`), run
during training and by ``reluvit evaluate`` (:mod:`.run`)."""
