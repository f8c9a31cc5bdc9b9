"""Triton kernels of fused point-wise attention, ``o_i = c * sum_j h(scale * q_i . k_j) v_j`` with ``c = L^-alpha``.

Each program owns one block of rows (queries in the forward and dq kernels, keys in the dk/dv kernel) of one
(batch, head) and walks over the blocks of the other side, so the L x L weights only ever exist one tile at a
time, in registers. Products accumulate in float32 whatever the input dtype.

Unlike softmax, ``h`` needs no row maximum and no normaliser: a tile's contribution is final as soon as it is
computed, so there is no running max, no rescaling of the accumulator and no log-sum-exp to store for the backward
(which in turn needs no ``rowsum(dO * O)`` term). That work, and its sequential dependence along the keys, is what
point-wise attention saves over FlashAttention.

``c`` (and ``scale`` in the gradients of q and k) multiplies the float32 accumulators once, after the loop, rather
than every tile. Tiles past the ragged end of the sequence are loaded as zeros and their weights masked to zero
explicitly: relu and relu2 would give zero anyway, an ``h`` with ``h(0) != 0`` would not.

The kernel bodies are plain functions: :func:`kernels` wraps them with ``triton.jit`` or with the Triton
interpreter when first used (see there why not with a decorator at import).
"""

from __future__ import annotations

import functools

import numpy as np
import triton
import triton.language as tl


def _forward(
    Q, K, V, O,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
    H, N_Q, N_K, scale, length_factor,
    ACTIVATION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One block of queries: o_i = c sum_j h(s_ij) v_j, walking over the blocks of keys."""
    blocks = (N_Q + BLOCK_M - 1) // BLOCK_M
    pair = tl.program_id(0) // blocks  # the blocks of one (batch, head) are consecutive programs: shared k, v in L2
    batch, head = (pair // H).to(tl.int64), (pair % H).to(tl.int64)
    rows = tl.program_id(0) % blocks * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    row_mask = (rows < N_Q)[:, None] & dim_ok[None, :]
    q = tl.load(Q + batch * sqb + head * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=row_mask, other=0.0)
    k_t_ptrs = K + batch * skb + head * skh + cols[None, :] * skn + dims[:, None] * skd  # k transposed: d x keys
    v_ptrs = V + batch * svb + head * svh + cols[:, None] * svn + dims[None, :] * svd
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, N_K, BLOCK_N):
        key_ok = cols < N_K - start
        k_t = tl.load(k_t_ptrs, mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        relu = tl.where(key_ok[None, :], tl.maximum(tl.dot(q, k_t, input_precision=DOT_PRECISION) * scale, 0.0), 0.0)
        p = relu * relu if ACTIVATION == "relu2" else relu
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        k_t_ptrs += BLOCK_N * skn
        v_ptrs += BLOCK_N * svn
    out = (acc * length_factor).to(O.dtype.element_ty)
    tl.store(O + batch * sob + head * soh + rows[:, None] * son + dims[None, :] * sod, out, mask=row_mask)


def _backward_dk_dv(
    Q, K, V, DO, DK, DV,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
    H, N_Q, N_K, scale, length_factor,
    ACTIVATION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One block of keys: dv_j = c sum_i h(s_ij) do_i and dk_j = c scale sum_i h'(s_ij) (do_i . v_j) q_i, walking
    over the blocks of queries with the tile held transposed (keys x queries), so both sums are plain products."""
    blocks = (N_K + BLOCK_N - 1) // BLOCK_N
    pair = tl.program_id(0) // blocks  # the blocks of one (batch, head) are consecutive programs: shared k, v in L2
    batch, head = (pair // H).to(tl.int64), (pair % H).to(tl.int64)
    keys = tl.program_id(0) % blocks * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    key_mask = (keys < N_K)[:, None] & dim_ok[None, :]
    k = tl.load(K + batch * skb + head * skh + keys[:, None] * skn + dims[None, :] * skd, mask=key_mask, other=0.0)
    v = tl.load(V + batch * svb + head * svh + keys[:, None] * svn + dims[None, :] * svd, mask=key_mask, other=0.0)
    q_ptrs = Q + batch * sqb + head * sqh + cols[:, None] * sqn + dims[None, :] * sqd
    do_ptrs = DO + batch * sdob + head * sdoh + cols[:, None] * sdon + dims[None, :] * sdod
    dk = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    dv = tl.full((BLOCK_N, BLOCK_D), 0.0, tl.float32)
    for start in range(0, N_Q, BLOCK_M):
        row_ok = cols < N_Q - start
        row_mask = row_ok[:, None] & dim_ok[None, :]
        q = tl.load(q_ptrs, mask=row_mask, other=0.0)
        do = tl.load(do_ptrs, mask=row_mask, other=0.0)
        relu_t = tl.where(row_ok[None, :],
                          tl.maximum(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale, 0.0), 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if ACTIVATION == "relu2":
            p_t = relu_t * relu_t
            ds_t = 2.0 * relu_t * dp_t
        else:
            p_t = relu_t
            ds_t = tl.where(relu_t > 0.0, dp_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        q_ptrs += BLOCK_M * sqn
        do_ptrs += BLOCK_M * sdon
    dk = (dk * (length_factor * scale)).to(DK.dtype.element_ty)
    tl.store(DK + batch * sdkb + head * sdkh + keys[:, None] * sdkn + dims[None, :] * sdkd, dk, mask=key_mask)
    dv = (dv * length_factor).to(DV.dtype.element_ty)
    tl.store(DV + batch * sdvb + head * sdvh + keys[:, None] * sdvn + dims[None, :] * sdvd, dv, mask=key_mask)


def _backward_dq(
    Q, K, V, DO, DQ,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd,
    H, N_Q, N_K, scale, length_factor,
    ACTIVATION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One block of queries: dq_i = c scale sum_j h'(s_ij) (do_i . v_j) k_j. A pass of its own, so that no two
    programs add into the same rows: deterministic, no atomics."""
    blocks = (N_Q + BLOCK_M - 1) // BLOCK_M
    pair = tl.program_id(0) // blocks  # the blocks of one (batch, head) are consecutive programs: shared k, v in L2
    batch, head = (pair // H).to(tl.int64), (pair % H).to(tl.int64)
    rows = tl.program_id(0) % blocks * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM
    row_mask = (rows < N_Q)[:, None] & dim_ok[None, :]
    q = tl.load(Q + batch * sqb + head * sqh + rows[:, None] * sqn + dims[None, :] * sqd, mask=row_mask, other=0.0)
    do = tl.load(DO + batch * sdob + head * sdoh + rows[:, None] * sdon + dims[None, :] * sdod, mask=row_mask,
                 other=0.0)
    k_ptrs = K + batch * skb + head * skh + cols[:, None] * skn + dims[None, :] * skd
    v_ptrs = V + batch * svb + head * svh + cols[:, None] * svn + dims[None, :] * svd
    dq = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    for start in range(0, N_K, BLOCK_N):
        key_ok = cols < N_K - start
        key_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_ptrs, mask=key_mask, other=0.0)
        v = tl.load(v_ptrs, mask=key_mask, other=0.0)
        relu = tl.where(key_ok[None, :], tl.maximum(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale, 0.0),
                        0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if ACTIVATION == "relu2":
            ds = 2.0 * relu * dp
        else:
            ds = tl.where(relu > 0.0, dp, 0.0)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        k_ptrs += BLOCK_N * skn
        v_ptrs += BLOCK_N * svn
    dq = (dq * (length_factor * scale)).to(DQ.dtype.element_ty)
    tl.store(DQ + batch * sdqb + head * sdqh + rows[:, None] * sdqn + dims[None, :] * sdqd, dq, mask=row_mask)


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in blocks]


# GPU candidates (BLOCK_M queries, BLOCK_N keys, warps, stages), tuned per (sequence length, head dim, activation,
# dtype) on first use; the last fits the shared memory of float32 at head dim 128. Under the interpreter a single
# non-square tile: the tests' odd lengths then span several blocks of each side, and a mix-up of the two block
# sizes cannot cancel out.
GPU_CONFIGS = {
    "forward": _configs([(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4), (64, 128, 4, 3),
                         (32, 32, 4, 2)]),
    "dk_dv": _configs([(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 4), (32, 64, 4, 4), (128, 128, 8, 2),
                       (32, 32, 4, 2)]),
    "dq": _configs([(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 4), (64, 32, 4, 4), (128, 128, 8, 2),
                    (32, 32, 4, 2)]),
}
INTERPRETER_CONFIGS = _configs([(64, 32, 4, 1)])
TUNING_KEY = ["N_Q", "N_K", "HEAD_DIM", "ACTIVATION", "DOT_PRECISION"]


@functools.cache
def kernels(interpret: bool) -> dict[str, triton.runtime.KernelInterface]:
    """The kernels (``forward``, ``dk_dv``, ``dq``), compiled for the GPU or run by the Triton interpreter.

    triton 3.9 reads ``TRITON_INTERPRET`` (``triton.knobs.runtime.interpret``) when ``@triton.jit`` decorates a
    function, not when the kernel is launched: a decorator would freeze the mode at import, so that whether the
    interpreter runs would depend on which module first imported this one. Wrapping the plain functions here, per
    mode, makes the mode follow the environment at the time of the call, and lets CUDA launches and interpreted CPU
    launches coexist in one process. For the same reason the kernels call no jitted function, not even triton's
    own (``tl.zeros`` is one: ``tl.full`` is a builtin), since those were wrapped once, when triton was imported.
    """
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap

        _widen_bf16_dot_operands()
    else:
        wrap = triton.jit
    functions = {"forward": _forward, "dk_dv": _backward_dk_dv, "dq": _backward_dq}
    return {name: triton.autotune(INTERPRETER_CONFIGS if interpret else GPU_CONFIGS[name], key=TUNING_KEY)(wrap(fn))
            for name, fn in functions.items()}


def _widen_bf16_dot_operands() -> None:
    """Make the interpreter's ``tl.dot`` correct for bfloat16 operands.

    The interpreter keeps bfloat16 blocks as their uint16 bit patterns and its ``create_dot`` widens only 8-bit
    floats, so triton 3.9 multiplies bf16 bit patterns as integers. Widening to float32 is exact (bf16 is the top
    half of a float32) and matches the GPU, whose tensor cores multiply bf16 exactly and accumulate in float32.
    """
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    create_dot = InterpreterBuilder.create_dot
    if getattr(create_dot, "widens_bf16", False):
        return

    def widen(x: TensorHandle) -> TensorHandle:
        if x.dtype.scalar != tl.bfloat16:
            return x
        return TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot_widening_bf16(self, a, b, *args):
        return create_dot(self, widen(a), widen(b), *args)

    create_dot_widening_bf16.widens_bf16 = True
    InterpreterBuilder.create_dot = create_dot_widening_bf16
