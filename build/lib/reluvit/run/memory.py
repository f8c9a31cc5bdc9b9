"""How much memory a training step needs, and the micro-batch that fits the device.

:meth:`TrainingStep.memory` is an analytic model of the peak memory of one training step (forward, backward, AdamW
step) of a ViT of :func:`reluvit.models.create_model` at a micro-batch: the weights, their gradients and AdamW's two
states, the tensors autograd saves in the forward pass (counted as timm's ``Block`` and our attention paths save
them), the largest tensors alive only in the backward pass, and the optimizer step's temporaries. It is checked
against measured peaks of small models in ``tests/test_memory.py``.

:func:`plan` turns it into ``trainer.micro_batch_size=auto`` (the largest divisor of the per-device batch that fits
the device's budget, :func:`device_budget`) and ``trainer.grad_checkpointing=auto``. The plan is analytic: every
rank of a DDP job computes it from the same config and the same kind of device (totals, not what is free at that
moment), so all ranks reach the same decision without communicating.

Bytes are counted per micro-batch; tensors under 1 % of a block (biases, per-row statistics of the attention) are
left out. Not modelled: attention dropout (none of the recipes use it), mixup's copies of the images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from reluvit.attention import SIGMOID_ATTENTION, structure
from reluvit.cache import environment_digest, read_cached, write_cached
from reluvit.kernels import reference, select_impl
from reluvit.models import PreLogits, create_model
from reluvit.run.schema import ConfigError
from reluvit.soft import SoftAttention

log = logging.getLogger(__name__)

# Below this micro-batch a step underuses the GPU, and recomputing the activations (a third more compute) buys a
# larger one; a smaller per-device batch is useful whole.
MIN_USEFUL_MICRO_BATCH = 32
# Of a GPU's total memory: the rest holds the CUDA context, cuBLAS and NCCL workspaces and the caching allocator's
# fragmentation, and covers the model's error.
CUDA_MEMORY_FRACTION = 0.85
HOST_MEMORY_FRACTION = 0.5  # of the host's memory, shared by its training processes: the rest is data loading's
GB = 1e9
LAYER_NORM_STATS = 8  # bytes per normalised row that LayerNorm saves: its mean and 1/std in float32
# What h of the point-wise family saves for its backward: its input (the logits), its output, an intermediate
# (relu2 = relu(s)^2 keeps relu(s)), or nothing.
SAVED_BY_H = {"relu": "output", "relu2": "intermediate", "gelu": "input", "softplus": "input", "identity": None,
              "relu6": "input", "sigmoid": "output"}
SAVED_BY_GATE = {"none": 1, "silu": 2, "sigmoid": 1}  # g | g and silu(g) | sigmoid(g), kept by g(...) * o


@dataclass(frozen=True)
class Precision:
    """Bytes per element of a Lightning precision."""

    param: int  # weights, gradients and AdamW's states (the parameters' dtype)
    compute: int  # matrix-product outputs: autocast's dtype under mixed precision
    mixed: bool  # autocast: float32 residual stream and LayerNorm; matmul inputs saved as 16-bit copies

    @property
    def stream(self) -> int:
        """The residual stream: float32 under autocast (a 16-bit branch added to it is promoted)."""
        return 4 if self.mixed else self.compute

    @classmethod
    def named(cls, name: str) -> Precision:
        """From a Lightning precision name (``bf16-mixed``, ``32-true``, ``16``, ...)."""
        name = str(name)
        if name.startswith("transformer-engine"):  # 8-bit matmuls inside a bf16 autocast: bounded by bf16-mixed
            name = "bf16-mixed"
        return PRECISIONS[LIGHTNING_ALIASES.get(name, name)]


PRECISIONS = {
    "64-true": Precision(8, 8, False), "32-true": Precision(4, 4, False),
    "16-true": Precision(2, 2, False), "bf16-true": Precision(2, 2, False),
    "16-mixed": Precision(4, 2, True), "bf16-mixed": Precision(4, 2, True),
}
LIGHTNING_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass(frozen=True)
class ViTShape:
    """What the memory of a ViT depends on, read from the model (built on the meta device)."""

    width: int
    depth: int
    heads: int
    mlp_dim: int
    tokens: int
    image_elements: int  # in_chans x img_size^2
    num_classes: int
    pre_logits: bool
    params: int
    matmul_params: int  # the weights of Linear and Conv layers, of which autocast keeps 16-bit copies
    attention: str  # the activation (softmax, relu, ..., sigmoid_attn, soft)
    attention_path: str  # sdpa | fused | reference | soft
    qk_norm: bool
    gate: str | None  # the gate's activation; None: no gate
    learned_alpha: str  # none | layer (one scalar) | head (a (heads, 1, 1) tensor)
    landmarks: int  # SOFT's m; 0 for the others
    local_term: bool  # SOFT's convolution of V

    @classmethod
    def of(cls, architecture: Mapping, device_type: str) -> ViTShape:
        """From the arguments of :func:`reluvit.models.create_model`, for a run on ``device_type`` (read once per
        process: the points of a sweep share a few)."""
        return _vit_shape(json.dumps(_structure(architecture), sort_keys=True), device_type)

    @classmethod
    def _read(cls, architecture: Mapping, device_type: str) -> ViTShape:
        with torch.device("meta"):
            model = create_model(**architecture)
        attn = model.blocks[0].attn
        soft = isinstance(attn, SoftAttention)
        grid = model.patch_embed.grid_size
        return cls(
            width=model.embed_dim, depth=len(model.blocks), heads=attn.num_heads,
            mlp_dim=model.blocks[0].mlp.fc1.out_features,
            tokens=model.patch_embed.num_patches + model.num_prefix_tokens,
            image_elements=model.patch_embed.proj.in_channels * math.prod(model.patch_embed.img_size),
            num_classes=model.num_classes, pre_logits=isinstance(model.fc_norm, PreLogits),
            params=sum(p.numel() for p in model.parameters()),
            matmul_params=sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)),
            attention="soft" if soft else attn.activation, attention_path=attention_path(attn, device_type),
            qk_norm=isinstance(attn.q_norm, nn.LayerNorm),
            gate=None if soft or attn.gate is None else attn.gate_activation,
            learned_alpha="none" if soft or attn.raw_alpha is None else ("head" if attn.raw_alpha.dim() else "layer"),
            landmarks=math.prod(math.ceil(side / attn.sr) for side in grid) if soft else 0,
            local_term=soft and attn.local is not None,
        )


def _structure(architecture: Mapping) -> dict:
    """The model's arguments less the attention's value-only options, which change no tensor (Figure 2's alphas
    share one reading)."""
    return {**architecture, "attention": structure(architecture.get("attention") or {})}


@functools.cache
def _vit_shape(architecture: str, device_type: str) -> ViTShape:
    """Read once per process, and kept on disk (building a model on the meta device takes up to a second: a sweep's
    dry run reads dozens), keyed with the code, packages and machine it was read with."""
    key = hashlib.sha256(json.dumps([architecture, device_type, environment_digest()]).encode()).hexdigest()
    cached = read_cached("vit_shape", key)
    if isinstance(cached, dict):
        try:
            return ViTShape(**cached)
        except TypeError:  # written by another layout of ViTShape
            pass
    shape = ViTShape._read(json.loads(architecture), device_type)
    write_cached("vit_shape", key, asdict(shape))
    return shape


def attention_path(attn: nn.Module, device_type: str) -> str:
    """What the attention layer runs in training on ``device_type`` (as :meth:`PointwiseAttention.forward`)."""
    if isinstance(attn, SoftAttention):
        return "soft"
    if attn.activation == "softmax":
        return "sdpa"
    if attn.activation == SIGMOID_ATTENTION:
        return "reference"
    if attn.impl == "fused":  # where it cannot run, the run fails
        return "fused"
    return select_impl(attn.impl, activation=attn.activation, device=torch.device(device_type))


@dataclass(frozen=True)
class Memory:
    """Bytes of one training step by part; :attr:`peak` is what the step needs."""

    weights: int  # and, under autocast, the 16-bit copies of the matmul weights, kept for the backward pass
    gradients: int  # kept whole across the micro-batches of an accumulated step (and DDP's bucket copy)
    optimizer_states: int  # AdamW's exp_avg and exp_avg_sq
    activations: int  # what autograd holds at the end of the forward pass
    backward_transient: int  # the largest tensors alive only during the backward pass
    optimizer_step: int  # AdamW's temporaries, once the activations are freed

    @property
    def peak(self) -> int:
        held = self.weights + self.gradients + self.optimizer_states
        return held + max(self.activations + self.backward_transient, self.optimizer_step)


@dataclass(frozen=True)
class TrainingStep:
    """One training step of a ViT at a precision on a kind of device: its :meth:`memory` at any micro-batch."""

    vit: ViTShape
    precision: Precision
    device_type: str = "cuda"
    world_size: int = 1

    @classmethod
    def of(cls, architecture: Mapping, precision: str, device_type: str = "cuda", world_size: int = 1) -> TrainingStep:
        return cls(ViTShape.of(architecture, device_type), Precision.named(precision), device_type, world_size)

    def memory(self, batch: int, grad_checkpointing: bool = False) -> Memory:
        return Memory(weights=self.weights(), gradients=self.gradients(), optimizer_states=self.optimizer_states(),
                      activations=self.activations(batch, grad_checkpointing),
                      backward_transient=self.backward_transient(batch), optimizer_step=self.optimizer_step())

    # --- the parameters ----------------------------------------------------------------------------------------

    def weights(self) -> int:
        casts = self.vit.matmul_params * self.precision.compute if self.precision.mixed else 0
        return self.vit.params * self.precision.param + casts

    def gradients(self) -> int:
        ddp_buckets = self.world_size > 1  # DDP reduces a flat copy of the gradients
        return self.vit.params * self.precision.param * (1 + ddp_buckets)

    def optimizer_states(self) -> int:
        return 2 * self.vit.params * self.precision.param

    def optimizer_step(self) -> int:
        return self.vit.params * self.precision.param  # foreach AdamW: sqrt(exp_avg_sq) of every parameter at once

    # --- the activations ---------------------------------------------------------------------------------------

    def activations(self, batch: int, grad_checkpointing: bool = False) -> int:
        """Saved tensors at the end of the forward pass. With checkpointing the blocks keep only their inputs, and
        the backward pass recomputes one block at a time."""
        if grad_checkpointing:
            blocks = self.vit.depth * self.block_input(batch) + self.block(batch) - self.block_input(batch)
        else:
            blocks = self.vit.depth * self.block(batch)
        return self.images(batch) + blocks + self.head(batch)

    def images(self, batch: int) -> int:
        """The float32 batch (the patch embedding saves it), and autocast's 16-bit copy of it."""
        p = self.precision
        return batch * self.vit.image_elements * (4 + p.compute * p.mixed)

    def block_input(self, batch: int) -> int:
        return self._tokens(batch) * self.precision.stream * self.vit.width

    def block(self, batch: int) -> int:
        """timm's pre-LN ``Block``: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""
        return self.residual(batch) + self.attention_layer(batch) + self.mlp(batch)

    def residual(self, batch: int) -> int:
        """The two residual-stream tensors the block's LayerNorms save (its input and ``x + attn``)."""
        return 2 * (self.block_input(batch) + self._tokens(batch) * LAYER_NORM_STATS)

    def mlp(self, batch: int) -> int:
        """fc1's input, GELU's input (fc1's output) and fc2's input (GELU's output)."""
        return self._tokens(batch) * self.precision.compute * (self.vit.width + 2 * self.vit.mlp_dim)

    def attention_layer(self, batch: int) -> int:
        if self.vit.attention_path == "soft":
            return self.soft_attention(batch)
        return self.projections(batch) + self.qk_norm(batch) + self.attention(batch) + self.gate(batch)

    def projections(self, batch: int) -> int:
        """qkv's input and output (q, k and v are views of it, saved by what follows) and proj's input."""
        return self._tokens(batch) * self.precision.compute * 5 * self.vit.width

    def qk_norm(self, batch: int) -> int:
        """The q and k LayerNorms' statistics, and on CUDA under autocast their float32 copies of q and k (CPU
        autocast normalises 16-bit tensors as they are)."""
        if not self.vit.qk_norm:
            return 0
        copies = 2 * self.vit.width * 4 if self._norms_cast_to_float32() else 0
        return self._tokens(batch) * (copies + 2 * self.vit.heads * LAYER_NORM_STATS)

    def attention(self, batch: int) -> int:
        """The attention path's own saved tensors, from q, k, v to its output."""
        path, c, d = self.vit.attention_path, self.precision.compute, self.vit.width
        normed_qk = self._tokens(batch) * 2 * d * c * self.vit.qk_norm  # new tensors (else views of qkv)
        if path == "sdpa":  # q, k, v, the output and the per-row log-sum-exp (flash and memory-efficient kernels)
            return normed_qk + self._tokens(batch) * (d * c + self.vit.heads * 4)
        if path == "fused":  # q, k, v only; a learned L^-alpha multiplies the output outside the kernel
            return normed_qk + self._tokens(batch) * d * c * self._learned_alpha()
        if self._query_chunk_rows(batch) < self.vit.tokens:  # each chunk's checkpoint keeps q and k as passed
            return self._tokens(batch) * 2 * d * self._qk_norm_bytes() * self.vit.qk_norm
        scaled_q_and_k = self._tokens(batch) * d * c * (1 + self.vit.qk_norm)
        return scaled_q_and_k + self._weights_elements(batch) * c * self._saved_weights()

    def gate(self, batch: int) -> int:
        """``proj(g(W_g x) * o)``: the gate's input (autocast casts it again), what g and the product keep."""
        if self.vit.gate is None:
            return 0
        tensors = self.precision.mixed + SAVED_BY_GATE[self.vit.gate] + 1
        return self._tokens(batch) * self.precision.compute * self.vit.width * tensors

    def soft_attention(self, batch: int) -> int:
        """SOFT (reluvit.soft): the q and v projections' inputs and outputs, the scaled q, the landmark and local
        convolutions' inputs and proj's input; the float32 kernel term's q, 2q and v, its landmark-sized tensors,
        its K2 and pseudo-inverse (landmarks^2 per head), and K1 (tokens x landmarks per head), which both its clamp
        and its exp save."""
        c, d, heads, m, n = self.precision.compute, self.vit.width, self.vit.heads, self.vit.landmarks, self.vit.tokens
        f32 = 4 if self.precision.mixed else c
        inputs_and_outputs = d * c * (3 + self.precision.mixed + self.vit.qk_norm + self.vit.local_term)
        kernel_term = d * f32 * (3 + 6 * m / n) + heads * (3 * m * m / n * f32 + 2 * m * 4)
        return int(self._tokens(batch) * (inputs_and_outputs + kernel_term))

    def head(self, batch: int) -> int:
        """The final LayerNorm's input, the pooled features through pre-logits and head, and the loss's float32
        logits and targets."""
        features = self.vit.width * self.precision.compute * (1 + 2 * self.vit.pre_logits)
        return self.block_input(batch) + batch * (features + 8 * self.vit.num_classes)

    # --- the backward pass -------------------------------------------------------------------------------------

    def backward_transient(self, batch: int) -> int:
        """The gradient of the residual stream plus the largest gradient inside a block: the MLP's hidden one, or
        the attention's, less the MLP's saved tensors (the block's backward pass has released them by then)."""
        mlp_hidden = self._tokens(batch) * self.precision.compute * self.vit.mlp_dim
        return self.block_input(batch) + max(mlp_hidden, self._attention_transient(batch) - self.mlp(batch))

    def _attention_transient(self, batch: int) -> int:
        """The attention's gradients: of q, k and v, and on the reference path of the weights (one chunk's, with
        the chunk's recomputed weights and q and k)."""
        tokens, c, d = self._tokens(batch), self.precision.compute, self.vit.width
        if self.vit.attention_path == "soft":
            return tokens * (3 * d * c + self.vit.heads * self.vit.landmarks * 4 * 3)  # and K1's intermediates
        if self.vit.attention_path != "reference":
            return tokens * 3 * d * c
        rows = self._query_chunk_rows(batch)
        if rows >= self.vit.tokens:
            return self._weights_elements(batch) * self._weights_gradient_bytes()
        chunk = self._weights_elements(batch) * rows // self.vit.tokens
        return chunk * (c * self._saved_weights() + self._weights_gradient_bytes()) + tokens * 2 * d * c

    def _weights_gradient_bytes(self) -> int:
        """Per element of the weights, what their backward pass adds: the weights' gradient; with a learned
        L^-alpha also h's and the product summed into alpha's. Under autocast a per-head alpha (float32, not a
        scalar) promotes the weights to float32, and those gradients come in float32."""
        c = self.precision.compute
        if self.precision.mixed and self.vit.learned_alpha == "head":
            return c + 2 * 4
        return c * (1 + self._learned_alpha())

    def _learned_alpha(self) -> bool:
        return self.vit.learned_alpha != "none"

    # --- helpers -------------------------------------------------------------------------------------------------

    def _tokens(self, batch: int) -> int:
        return batch * self.vit.tokens

    def _weights_elements(self, batch: int) -> int:
        return batch * self.vit.heads * self.vit.tokens**2

    def _query_chunk_rows(self, batch: int) -> int:
        """Queries per chunk of the reference path (reluvit.kernels.reference); all of them on other paths."""
        if self.vit.attention_path != "reference":
            return self.vit.tokens
        return reference.query_chunk_rows(batch * self.vit.heads, self.vit.tokens, self.vit.tokens,
                                          self.precision.compute, reference.MAX_WEIGHTS_BYTES)

    def _saved_weights(self) -> int:
        """L x L tensors the reference path saves: what h saves, the weights that multiply v, and with a learned
        L^-alpha h's output unless h saved it already."""
        if self.vit.attention == SIGMOID_ATTENTION:  # sigmoid(s + b), which multiplies v itself
            return 1
        saved = SAVED_BY_H[self.vit.attention]
        return (saved is not None) + 1 + (self._learned_alpha() and saved != "output")

    def _norms_cast_to_float32(self) -> bool:
        return self.precision.mixed and self.device_type == "cuda"

    def _qk_norm_bytes(self) -> int:
        return 4 if self._norms_cast_to_float32() else self.precision.compute


@dataclass(frozen=True)
class Plan:
    """How a device takes its share of the global batch."""

    micro_batch_size: int
    accumulate: int  # micro-batches per optimizer step
    grad_checkpointing: bool
    estimate_bytes: int  # TrainingStep.memory(micro_batch_size).peak
    budget_bytes: float

    def facts(self) -> dict:
        """What the run's summary records."""
        return {"micro_batch_size": self.micro_batch_size, "accumulate_grad_batches": self.accumulate,
                "grad_checkpointing": self.grad_checkpointing,
                "memory_estimate_gb": round(self.estimate_bytes / GB, 3),
                "memory_budget_gb": round(self.budget_bytes / GB, 3)}

    def __str__(self) -> str:
        return (f"micro-batch {self.micro_batch_size} x {self.accumulate} accumulation steps, gradient checkpointing "
                f"{'on' if self.grad_checkpointing else 'off'}: {self.estimate_bytes / GB:.3g} GB of a "
                f"{self.budget_bytes / GB:.3g} GB budget")


def plan(step: TrainingStep, per_device: int, budget_bytes: float, micro_batch_size: int | str | None = "auto",
         grad_checkpointing: bool | str = "auto") -> Plan:
    """The micro-batch and checkpointing of a device's ``per_device`` share of the global batch.

    ``micro_batch_size``: ``auto``, the largest divisor of ``per_device`` whose estimate fits ``budget_bytes``;
    None, ``per_device``; or a divisor of it. ``grad_checkpointing``: ``auto`` checkpoints when without it the
    micro-batch would be below ``min(per_device, MIN_USEFUL_MICRO_BATCH)`` and checkpointing lets a larger one fit
    (a given micro-batch: when it does not fit without); True or False as given. Settings that were given are
    kept even when their estimate is over budget (with a warning); ``auto`` that fits nothing raises ConfigError.
    """
    checkpointing = None if grad_checkpointing == "auto" else bool(grad_checkpointing)
    if micro_batch_size != "auto":
        micro = per_device if micro_batch_size is None else micro_batch_size
        if per_device % micro:
            raise ConfigError("trainer.micro_batch_size", f"{micro} does not divide the per-device batch {per_device}")
        if checkpointing is None:
            checkpointing = step.memory(micro).peak > budget_bytes
        chosen = _plan(step, per_device, micro, checkpointing, budget_bytes)
        if chosen.estimate_bytes > budget_bytes:
            log.warning("%s: over budget; a smaller trainer.micro_batch_size (or auto) may be needed", chosen)
        return chosen
    if checkpointing is None:
        without = largest_fitting(step, per_device, budget_bytes, False)
        checkpointing = (without < min(per_device, MIN_USEFUL_MICRO_BATCH)
                         and largest_fitting(step, per_device, budget_bytes, True) > without)
    micro = largest_fitting(step, per_device, budget_bytes, checkpointing)
    if not micro:
        raise _unfit(step, budget_bytes, checkpointing)
    return _plan(step, per_device, micro, checkpointing, budget_bytes)


def largest_fitting(step: TrainingStep, per_device: int, budget_bytes: float, grad_checkpointing: bool) -> int:
    """The largest divisor of ``per_device`` whose peak fits the budget, 0 if none. Every divisor is tried: the
    peak is not monotonic where the reference path starts chunking its weights."""
    divisors = (n for n in range(per_device, 0, -1) if per_device % n == 0)
    return next((n for n in divisors if step.memory(n, grad_checkpointing).peak <= budget_bytes), 0)


def _plan(step: TrainingStep, per_device: int, micro: int, checkpointing: bool, budget_bytes: float) -> Plan:
    return Plan(micro, per_device // micro, checkpointing, step.memory(micro, checkpointing).peak, budget_bytes)


def _unfit(step: TrainingStep, budget_bytes: float, checkpointing: bool) -> ConfigError:
    without, with_ = (step.memory(1, c).peak for c in (False, True))
    budget = f"over the device's budget of {budget_bytes / GB:.2f} GB"
    if not checkpointing and with_ <= budget_bytes:
        return ConfigError("trainer.grad_checkpointing", f"false, and a micro-batch of 1 needs {without / GB:.2f} GB "
                                                         f"without it, {budget}; auto or true would checkpoint")
    return ConfigError("trainer.micro_batch_size", f"auto: even a micro-batch of 1 needs {with_ / GB:.2f} GB with "
                                                   f"gradient checkpointing, {budget}")


def device_budget(device_type: str, processes_per_host: int = 1) -> float:
    """Bytes a training process plans for: :data:`CUDA_MEMORY_FRACTION` of its GPU's total memory (the GPUs of a
    job are one model), or on CPU :data:`HOST_MEMORY_FRACTION` of the host's physical memory shared by the host's
    processes. Totals rather than what is free now, so that every rank of a job gets the same budget."""
    if device_type == "cuda":
        # the properties, not mem_get_info: that would make a CUDA context on GPU 0 in every rank
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory * CUDA_MEMORY_FRACTION
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host * HOST_MEMORY_FRACTION / processes_per_host
