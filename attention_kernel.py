"""
FlashAttention (forward and backward) written by hand in Triton: the attention of model.py on GPUs.

phi-1 (§2.3 of "Textbooks Are All You Need") was trained with FlashAttention and attention dropout 0.1. This file is
that attention, readable top to bottom:

    flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0) -> o     # all (B, H, T, D)

- forward (FlashAttention-2): one program per block of BLOCK_M queries streams blocks of BLOCK_N keys/values and keeps
  an online softmax in base 2 (fp32 running max and sum); it saves the log-sum-exp (LSE) for the backward pass.
- backward: delta = rowsum(dO * O) first, then one program per key block recomputes P from the LSE once and
  produces dK, dV and that block's share of dQ (added into an fp32 buffer with atomics): 5 matmuls per score, as
  FlashAttention-2. With torch.use_deterministic_algorithms(True) (or deterministic=True) dQ instead comes from a
  second pass over query blocks: 2 more matmuls per score, bitwise reproducible gradients.
- every key loop is split into stages: blocks that need no mask (the bulk) run a lean loop, only the blocks on the
  causal diagonal, at a document edge or at the sequence tail pay for masking.
- doc_ids (B, T): document masking for packed sequences. A token attends only to earlier tokens of its own document
  (a document is a maximal run of equal doc_ids); key blocks outside a query block's documents are never visited.
- dropout_p > 0: dropout on P inside the kernels. One Philox call gives 16 bytes for 16 scores (as FlashAttention-2),
  keyed on a seed drawn on the device from torch's generator (reproducible under torch.manual_seed, CUDA-graph safe)
  and regenerated in the backward pass; dropout_mask() materialises the same keep-mask. p is rounded to a multiple
  of 1/256 (0.1 -> 26/256) and kept entries are scaled by exactly 1/(1 - that p).
- any T >= 1 (tail blocks masked), head dims 16/32/64/128, fp16/bf16 on GPU (and fp32 in the CPU interpreter),
  any strides (e.g. views of a fused qkv projection, without copies), 64-bit offsets for huge B*H*T.
- registered as PyTorch custom ops (torch.library), so torch.compile(fullgraph=True) traces through it.

flash_attention_supported(q, k, v) tells a caller when to fall back to PyTorch SDPA.

Run:
    python -m pytest -q tests/test_attention_kernel.py     # CPU, Triton interpreter (TRITON_INTERPRET=1)
    python attention_kernel.py                             # benchmark table on a CUDA GPU (vs SDPA, FlexAttention)
    python attention_kernel.py --sass=True                 # sm_90 instruction counts per loop, no GPU needed
"""
import math
import os
import re
import subprocess
import tempfile
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.backends.compiler import GPUTarget

import configurator
from configurator import RunError, UserError

# Under TRITON_INTERPRET=1 the kernels run as numpy on the CPU: bf16 arithmetic is wrong there (numpy has no bf16),
# so every load is upcast to fp32, and autotuning (which times configs with a GPU clock) is replaced by one config.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): exp2 is the native instruction


# ----------------------------------------------------------------------------------------------------------------
# forward

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, offs_d, ds_m,
               de_m, m0, lo, hi, T, qk_scale, seed, bh, drop_t, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Online softmax over the key blocks [lo, hi) for one query block (scores in base 2, fp32 statistics)."""
    arange_n = tl.arange(0, BLOCK_N)
    kt_offs = arange_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
    v_offs = arange_n[:, None] * stride_vt + offs_d[None, :] * stride_vd   # (BLOCK_N, D)
    kt_block = k_base + lo.to(tl.int64) * stride_kt  # scalar pointers to the current key block
    v_block = v_base + lo.to(tl.int64) * stride_vt
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + arange_n
        if MASKED:
            kt = tl.load(kt_block + kt_offs, mask=offs_n[None, :] < T, other=0.0)
            v = tl.load(v_block + v_offs, mask=offs_n[:, None] < T, other=0.0)
        else:
            kt = tl.load(kt_block + kt_offs)
            v = tl.load(v_block + v_offs)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, kt)  # (BLOCK_M, BLOCK_N), fp32
        if MASKED:
            ok = _visible(offs_m[:, None], offs_n[None, :], ds_m[:, None], de_m[:, None], T, CAUSAL, HAS_DOCS)
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax denominator counts dropped entries too
        acc = acc * alpha[:, None]
        if DROPOUT:  # 1/(1-p) is applied once at the end
            p = tl.where(_keep(seed, bh, m0, start_n, drop_t, BLOCK_M, BLOCK_N), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
        kt_block += BLOCK_N * stride_kt
        v_block += BLOCK_N * stride_vt
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["drop_t"])
def _attn_fwd(Q, K, V, O, LSE, DS, DE, SEED, drop_t, drop_scale, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd, stride_ob, stride_oh, stride_ot, stride_od,
              H, T, T_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "forward: BLOCK_M must be a multiple of BLOCK_N (causal diagonal)")
    tl.static_assert(not DROPOUT or (BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0), "dropout: 16 x 32 tiles (_keep)")
    bh = tl.program_id(0).to(tl.int64)  # B*H on axis 0 (up to 2^31 programs; axis 1 stops at 65535)
    # Causal: the last query blocks have the most keys to visit, so they are launched first (longest job first keeps
    # the SMs busy at the end of the grid instead of waiting on a few long programs).
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1) if CAUSAL else tl.program_id(1)
    b = bh // H  # int64 from here on: b * stride_b can exceed 2^31
    h = bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qt + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
    if UPCAST:
        q = q.to(tl.float32)
    if HAS_DOCS:
        ds_m = tl.load(DS + b * T + offs_m, mask=row_ok, other=0)  # rows past T: see every key, so that l_i > 0
        de_m = tl.load(DE + b * T + offs_m, mask=row_ok, other=T)
    else:
        ds_m = offs_m
        de_m = offs_m
    seed = _load_seed(SEED, DROPOUT)
    qk_scale = sm_scale * LOG2E

    # m_i starts at a finite floor, not -inf: a row whose keys so far were all masked (possible with documents) then
    # gets exp2(-inf - floor) = 0 instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo, s1, s2, hi = _query_stages(DS, DE, b, m0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if HAS_DOCS:  # keys before the last query's document start
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                                   offs_m, offs_d, ds_m, de_m, m0, lo, s1, T, qk_scale, seed, bh, drop_t,
                                   True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                               offs_m, offs_d, ds_m, de_m, m0, s1, s2, T, qk_scale, seed, bh, drop_t,
                               False, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)
    # the causal diagonal / the end of the document / the tail of the sequence
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                               offs_m, offs_d, ds_m, de_m, m0, s2, hi, T, qk_scale, seed, bh, drop_t,
                               True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)

    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * drop_scale
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)  # base-2 log-sum-exp of the scaled scores
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------------------
# masks and dropout, shared by the kernels

@triton.jit
def _visible(offs_m, offs_n, ds_m, de_m, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Which (query, key) pairs may attend; offs_m/offs_n (and the queries' document bounds ds_m/de_m) are already
    broadcast to 2-D as (M, 1)/(1, N). Queries past T are not masked here: the forward and dQ kernels never store
    them, the dK/dV kernel masks them itself."""
    ok = offs_n < T
    if CAUSAL:
        ok = ok & (offs_n <= offs_m)
    if HAS_DOCS:
        ok = ok & (offs_n >= ds_m)
        if not CAUSAL:
            ok = ok & (offs_n < de_m)
    return ok


@triton.jit
def _query_stages(DS, DE, b, m0, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """Key ranges for the query block [m0, m0 + BLOCK_M): masked [lo, s1), unmasked [s1, s2), masked [s2, hi).

    Keys outside [lo, hi) are masked for every query of the block and are skipped. Inside, only [s1, s2) is known
    to be fully visible (no causal, document or tail mask): keys at or after the start of the last query's document,
    before the first query (causal) or before the end of the first query's document (non-causal), below T.
    Boundaries that are followed by another stage are multiples of BLOCK_N, so no key is visited twice.
    DS/DE hold, per token, the first position of its document and the first position after it.
    """
    last = tl.minimum(m0 + BLOCK_M, T) - 1
    if HAS_DOCS:
        lo = tl.load(DS + b * T + m0) // BLOCK_N * BLOCK_N
        s1 = tl.cdiv(tl.load(DS + b * T + last), BLOCK_N) * BLOCK_N
        end_first = tl.load(DE + b * T + m0)
        end_last = tl.load(DE + b * T + last)
    else:
        lo = m0 * 0
        s1 = lo
        end_first = lo + T
        end_last = end_first
    if CAUSAL:
        hi = last + 1
        s2 = m0
    else:
        hi = end_last
        s2 = end_first // BLOCK_N * BLOCK_N
    s1 = tl.minimum(tl.maximum(s1, lo), hi)
    s2 = tl.minimum(tl.maximum(s2, s1), hi)
    return lo, s1, s2, hi


@triton.jit
def _key_stages(DS, DE, b, n0, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Query ranges for the key block [n0, n0 + BLOCK_N), mirroring _query_stages: masked [lo, s1), unmasked
    [s1, s2), masked [s2, hi). Boundaries followed by another stage are multiples of BLOCK_M."""
    last = tl.minimum(n0 + BLOCK_N, T) - 1
    if HAS_DOCS:
        start_first = tl.load(DS + b * T + n0) // BLOCK_M * BLOCK_M
        start_last = tl.cdiv(tl.load(DS + b * T + last), BLOCK_M) * BLOCK_M
        s2 = tl.load(DE + b * T + n0) // BLOCK_M * BLOCK_M
        hi = tl.load(DE + b * T + last)
    else:
        start_first = n0 * 0
        start_last = start_first
        s2 = T // BLOCK_M * BLOCK_M
        hi = start_first + T
    if CAUSAL:  # queries before the key block see none of it; the diagonal block needs the causal mask
        lo = n0
        s1 = n0 + BLOCK_N
    else:
        lo = start_first
        s1 = start_last
    s1 = tl.minimum(tl.maximum(s1, lo), hi)
    s2 = tl.minimum(tl.maximum(s2, s1), hi)
    return lo, s1, s2, hi


@triton.jit
def _load_seed(SEED, DROPOUT: tl.constexpr):
    """The dropout seed, read on the device (a launch argument would be frozen by CUDA graphs and, as a Python int,
    specialised by Triton: a seed divisible by 16 would compile new kernels)."""
    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    return seed


@triton.jit
def _bytes_ge(w, t):
    """(..., 2, 2): byte 2*i + j of the 32-bit words w compared with the 8-bit threshold t, at [..., j, i]."""
    return tl.join(tl.join((w & 0xFF) >= t, (w & 0xFF00) >= (t << 8)),
                   tl.join((w & 0xFF0000) >= (t << 16), w >= (t << 24)))


@triton.jit
def _keep(seed, bh, m0, n0, drop_t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout keep-mask (BLOCK_M, BLOCK_N) for the P tile of head bh whose first query is m0 and first key n0
    (m0 % 16 == 0, n0 % 32 == 0): entry (i, j) is kept when its random byte is >= drop_t = round(256 p).

    One Philox call (4 x 32 bits) serves 16 entries: queries {i, i + 8} x keys {j, j + 1} + {0, 8, 16, 24}, with
    counter (key group, query group, bh) = ((j // 32) * 4 + j % 8 // 2, (i // 16) * 8 + i % 8, bh). Those 16 are
    exactly what one thread holds of a tensor-core accumulator tile (mma.sync and wgmma), so every Philox output is
    used in the thread that computes it. Entry (i, j) takes word j // 8 % 4, byte 2 * (i // 8 % 2) + j % 2.
    """
    a = tl.arange(0, BLOCK_M // 16)[:, None, None, None]
    r = tl.arange(0, 8)[None, :, None, None]
    c = tl.arange(0, BLOCK_N // 32)[None, None, :, None]
    q = tl.arange(0, 4)[None, None, None, :]
    query_group = (m0 // 2 + a * 8 + r).to(tl.uint32)  # (M/16, 8, 1, 1)
    key_group = (n0 // 8 + c * 4 + q).to(tl.uint32)    # (1, 1, N/32, 4)
    key_group, query_group = tl.broadcast(key_group, query_group)
    w0, w1, w2, w3 = tl.philox(seed, key_group, query_group, bh.to(tl.uint32), 0)
    t = drop_t.to(tl.uint32)
    keep = tl.join(tl.join(_bytes_ge(w0, t), _bytes_ge(w1, t)), tl.join(_bytes_ge(w2, t), _bytes_ge(w3, t)))
    # (a, r, c, q, key bit 0, query bit 3, key bit 3, key bit 4) -> (query, key)
    return tl.reshape(tl.permute(keep, (0, 5, 1, 2, 7, 6, 3, 4)), (BLOCK_M, BLOCK_N))


# ----------------------------------------------------------------------------------------------------------------
# backward

@triton.jit
def _bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_od, stride_dob, stride_doh, stride_dot,
               stride_dod, H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), (B*H, T) fp32: the sum_j P_ij dP_ij term of the softmax gradient (dropout included)."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < T
    rows = offs_m[:, None].to(tl.int64)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows * stride_ot + offs_d[None, :] * stride_od, mask=row_ok,
                other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_inner(dk, dv, k, v, q_base, do_base, dq_base, stride_qt, stride_qd, stride_dot, stride_dod, stride_dqt,
               stride_dqd, LSE_bh, DELTA_bh, DS_b, DE_b, offs_n, offs_d, n0, lo, hi, T, qk_scale, sm_scale, seed, bh,
               drop_t, drop_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
               DROPOUT: tl.constexpr, FUSE_DQ: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """For one key block, over the query blocks [lo, hi): P recomputed once from the LSE, then dV += P^T dO,
    dK += dS^T Q and (FUSE_DQ) dQ += dS K added to the fp32 dQ rows with atomics. Tiles are (queries, keys), as in
    the forward, so the dropout bits come out of _keep the same way; P^T and dS^T go to the matmuls via shared
    memory, as in FlashAttention-2."""
    arange_m = tl.arange(0, BLOCK_M)
    q_offs = arange_m[:, None] * stride_qt + offs_d[None, :] * stride_qd     # (BLOCK_M, D)
    do_offs = arange_m[:, None] * stride_dot + offs_d[None, :] * stride_dod  # (BLOCK_M, D)
    dq_offs = arange_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd  # (BLOCK_M, D)
    q_block = q_base + lo.to(tl.int64) * stride_qt  # scalar pointers to the current query block
    do_block = do_base + lo.to(tl.int64) * stride_dot
    dq_block = dq_base + lo.to(tl.int64) * stride_dqt
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + arange_m
        row_ok = offs_m < T
        if MASKED:
            q = tl.load(q_block + q_offs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_block + do_offs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE_bh + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_block + q_offs)
            do = tl.load(do_block + do_offs)
            lse = tl.load(LSE_bh + offs_m)
            delta = tl.load(DELTA_bh + offs_m)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        p = tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N), from the LSE
        if MASKED:
            if HAS_DOCS:
                ds_m = tl.load(DS_b + offs_m, mask=row_ok, other=0)
                de_m = tl.load(DE_b + offs_m, mask=row_ok, other=0)
            else:
                ds_m = offs_m
                de_m = offs_m
            ok = _visible(offs_m[:, None], offs_n[None, :], ds_m[:, None], de_m[:, None], T, CAUSAL, HAS_DOCS)
            p = tl.where(ok & row_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        if DROPOUT:  # dV's 1/(1-p) is applied once at the end; dP's rides on the FMA with delta
            keep = _keep(seed, bh, start_m, n0, drop_t, BLOCK_M, BLOCK_N)
            dv = tl.dot(tl.trans(tl.where(keep, p, 0.0).to(do.dtype)), do, dv)
            ds = p * (tl.where(keep, dp, 0.0) * drop_scale - delta[:, None])
        else:
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            ds = p * (dp - delta[:, None])  # dS, softmax backward
        ds = ds.to(q.dtype)
        dk = tl.dot(tl.trans(ds), q, dk)
        if FUSE_DQ:
            dq = tl.dot(ds, k) * sm_scale  # (BLOCK_M, D), this key block's share
            if MASKED:
                tl.atomic_add(dq_block + dq_offs, dq, mask=row_ok[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_block + dq_offs, dq, sem="relaxed")
        q_block += BLOCK_M * stride_qt
        do_block += BLOCK_M * stride_dot
        dq_block += BLOCK_M * stride_dqt
    return dk, dv


@triton.jit(do_not_specialize=["drop_t"])
def _attn_bwd(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, DS, DE, SEED, drop_t, drop_scale, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
              stride_dqb, stride_dqh, stride_dqt, stride_dqd, stride_dkb, stride_dkh, stride_dkt, stride_dkd,
              stride_dvb, stride_dvh, stride_dvt, stride_dvd,
              H, T, T_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
              FUSE_DQ: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program owns one key block: it writes its dK, dV rows once and, with FUSE_DQ, adds into the fp32 dQ
    # buffer (zeroed by the caller), whose sums then depend on the order the programs run in.
    tl.static_assert(BLOCK_N % BLOCK_M == 0, "dK/dV: BLOCK_N must be a multiple of BLOCK_M (causal diagonal)")
    tl.static_assert(not DROPOUT or (BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0), "dropout: 16 x 32 tiles (_keep)")
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    n0 = tl.program_id(1) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < T
    keys = offs_n[:, None].to(tl.int64)
    k = tl.load(K + b * stride_kb + h * stride_kh + keys * stride_kt + offs_d[None, :] * stride_kd, mask=key_ok,
                other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + b * stride_vb + h * stride_vh + keys * stride_vt + offs_d[None, :] * stride_vd, mask=key_ok,
                other=0.0)  # (BLOCK_N, D)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    seed = _load_seed(SEED, DROPOUT)
    qk_scale = sm_scale * LOG2E

    lo, s1, s2, hi = _key_stages(DS, DE, b, n0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    dq_base = DQ + b * stride_dqb + h * stride_dqh
    LSE_bh = LSE + bh * T
    DELTA_bh = DELTA + bh * T
    DS_b = DS + b * T
    DE_b = DE + b * T
    dk, dv = _bwd_inner(dk, dv, k, v, q_base, do_base, dq_base, stride_qt, stride_qd, stride_dot, stride_dod,
                        stride_dqt, stride_dqd, LSE_bh, DELTA_bh, DS_b, DE_b, offs_n, offs_d, n0, lo, s1, T, qk_scale,
                        sm_scale, seed, bh, drop_t, drop_scale,
                        True, CAUSAL, HAS_DOCS, DROPOUT, FUSE_DQ, UPCAST, BLOCK_M, BLOCK_N)
    dk, dv = _bwd_inner(dk, dv, k, v, q_base, do_base, dq_base, stride_qt, stride_qd, stride_dot, stride_dod,
                        stride_dqt, stride_dqd, LSE_bh, DELTA_bh, DS_b, DE_b, offs_n, offs_d, n0, s1, s2, T, qk_scale,
                        sm_scale, seed, bh, drop_t, drop_scale,
                        False, CAUSAL, HAS_DOCS, DROPOUT, FUSE_DQ, UPCAST, BLOCK_M, BLOCK_N)
    dk, dv = _bwd_inner(dk, dv, k, v, q_base, do_base, dq_base, stride_qt, stride_qd, stride_dot, stride_dod,
                        stride_dqt, stride_dqd, LSE_bh, DELTA_bh, DS_b, DE_b, offs_n, offs_d, n0, s2, hi, T, qk_scale,
                        sm_scale, seed, bh, drop_t, drop_scale,
                        True, CAUSAL, HAS_DOCS, DROPOUT, FUSE_DQ, UPCAST, BLOCK_M, BLOCK_N)

    dk = dk * sm_scale  # S = sm_scale * Q K^T
    if DROPOUT:
        dv = dv * drop_scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + keys * stride_dkt + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + b * stride_dvb + h * stride_dvh + keys * stride_dvt + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, offs_d,
              ds_m, de_m, m0, lo, hi, T, qk_scale, seed, bh, drop_t, drop_scale, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Deterministic backward only: dQ of one query block over the key blocks [lo, hi), P recomputed once more."""
    arange_n = tl.arange(0, BLOCK_N)
    kt_offs = arange_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
    vt_offs = arange_n[None, :] * stride_vt + offs_d[:, None] * stride_vd  # (D, BLOCK_N)
    kt_block = k_base + lo.to(tl.int64) * stride_kt  # scalar pointers to the current key block
    vt_block = v_base + lo.to(tl.int64) * stride_vt
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + arange_n
        if MASKED:
            kt = tl.load(kt_block + kt_offs, mask=offs_n[None, :] < T, other=0.0)
            vt = tl.load(vt_block + vt_offs, mask=offs_n[None, :] < T, other=0.0)
        else:
            kt = tl.load(kt_block + kt_offs)
            vt = tl.load(vt_block + vt_offs)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        p = tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            ok = _visible(offs_m[:, None], offs_n[None, :], ds_m[:, None], de_m[:, None], T, CAUSAL, HAS_DOCS)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, vt)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, m0, start_n, drop_t, BLOCK_M, BLOCK_N), dp, 0.0) * drop_scale
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
        kt_block += BLOCK_N * stride_kt
        vt_block += BLOCK_N * stride_vt
    return dq


@triton.jit(do_not_specialize=["drop_t"])
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, DS, DE, SEED, drop_t, drop_scale, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                 stride_vb, stride_vh, stride_vt, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
                 stride_dqb, stride_dqh, stride_dqt, stride_dqd,
                 H, T, T_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # The deterministic dQ: one pass over query blocks, each program writing its rows once. Longest job first.
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "dQ: BLOCK_M must be a multiple of BLOCK_N (causal diagonal)")
    tl.static_assert(not DROPOUT or (BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0), "dropout: 16 x 32 tiles (_keep)")
    bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1) if CAUSAL else tl.program_id(1)
    b = bh // H
    h = bh % H
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = offs_m[:, None].to(tl.int64)
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)
    if HAS_DOCS:
        ds_m = tl.load(DS + b * T + offs_m, mask=row_ok, other=0)
        de_m = tl.load(DE + b * T + offs_m, mask=row_ok, other=T)
    else:
        ds_m = offs_m
        de_m = offs_m
    seed = _load_seed(SEED, DROPOUT)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E

    lo, s1, s2, hi = _query_stages(DS, DE, b, m0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if HAS_DOCS:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                       offs_d, ds_m, de_m, m0, lo, s1, T, qk_scale, seed, bh, drop_t, drop_scale,
                       True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                   offs_d, ds_m, de_m, m0, s1, s2, T, qk_scale, seed, bh, drop_t, drop_scale,
                   False, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                   offs_d, ds_m, de_m, m0, s2, hi, T, qk_scale, seed, bh, drop_t, drop_scale,
                   True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M, BLOCK_N)

    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows * stride_dqt + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dropout_mask_kernel(MASK, SEED, drop_t, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep-mask of one query block of one head as int8, with the same _keep() the attention kernels use."""
    bh = tl.program_id(0).to(tl.int64)
    m0 = tl.program_id(1) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)[:, None]
    seed = tl.load(SEED)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)[None, :]
        keep = _keep(seed, bh, m0, start, drop_t, BLOCK_M, BLOCK_N)  # (BLOCK_M, BLOCK_N)
        tl.store(MASK + (bh * T + rows.to(tl.int64)) * T + cols, keep.to(tl.int8), mask=(rows < T) & (cols < T))


# ----------------------------------------------------------------------------------------------------------------
# autotuning configs

def _configs(small, large):
    """Configs for one kernel: `small` (one fixed config) in the interpreter, the `large` candidates on a GPU.

    Each entry is (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M counts queries, BLOCK_N keys. The interpreter
    costs ~35 ms per program instance, so its blocks are small enough to exercise multi-block loops on short test
    sequences but few enough to stay fast. The static_asserts in the kernels check the block-size rules.
    """
    entries = [small] if INTERPRET else large
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in entries]


# The H100 candidates and their sm_90 register, spill and instruction counts are in docs/attention_kernel_tuning.md.
# Few candidates each: every one is compiled and timed once per new tuning key (seconds each at the first step).
FWD_CONFIGS = _configs((32, 32, 4, 1), [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)])
BWD_CONFIGS = _configs((16, 32, 4, 1), [(64, 64, 8, 3), (64, 64, 4, 3), (32, 128, 8, 3), (64, 128, 8, 2)])
DQ_CONFIGS = _configs((32, 32, 4, 1), [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 4)])
# Retune only when something that changes the best config changes; T by power-of-two bucket, not every length.
TUNE_KEY = ["HEAD_DIM", "T_BUCKET", "CAUSAL", "HAS_DOCS", "DROPOUT"]

attn_fwd = triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY)(_attn_fwd)
# timing a config adds into dQ, so the autotuner zeroes it before each trial and before the real launch
attn_bwd = triton.autotune(configs=BWD_CONFIGS, key=TUNE_KEY + ["FUSE_DQ"], reset_to_zero=["DQ"])(_attn_bwd)
attn_bwd_dq = triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY)(_attn_bwd_dq)


# ----------------------------------------------------------------------------------------------------------------
# Python side: launches, custom ops, autograd

def flash_attention_supported(q, k, v, doc_ids=None):
    """True when flash_attention() can run these inputs; otherwise a caller should use PyTorch SDPA.

    Needs q, k, v of one shape (B, H, T, D) with T >= 1 and D in HEAD_DIMS, one dtype and one device, and either a
    CUDA device with fp16/bf16, or the CPU under TRITON_INTERPRET=1 (fp32/fp16/bf16, for tests). doc_ids, if given,
    must be (B, T) integers on the same device.
    """
    if not (q.dim() == 4 and q.shape == k.shape == v.shape and q.shape[2] >= 1 and q.shape[3] in HEAD_DIMS):
        return False
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        return False
    if doc_ids is not None and (doc_ids.shape != (q.shape[0], q.shape[2]) or doc_ids.dtype.is_floating_point
                                or doc_ids.device != q.device):
        return False
    if q.device.type == "cuda":
        return not INTERPRET and q.dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


def document_bounds(doc_ids):
    """(B, T) doc ids -> (starts, ends), int32 (B, T): the first position of each token's document and the first
    position after it. A document is a maximal run of equal ids, as in a packed sequence (doc_ids = cumsum of EOT)."""
    B, T = doc_ids.shape
    pos = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]  # (B, T) a document starts here
    starts = torch.where(new_doc, pos, 0).cummax(dim=1).values  # (B, T)
    next_new = torch.ones_like(new_doc)
    next_new[:, :-1] = new_doc[:, 1:]  # (B, T) a document ends after this token
    ends = torch.where(next_new, pos + 1, T).flip(1).cummin(dim=1).values.flip(1)  # (B, T)
    return starts.to(torch.int32).contiguous(), ends.to(torch.int32).contiguous()


def dropout_threshold(dropout_p):
    """(8-bit threshold t, scale): an entry is dropped when its random byte is < t = round(256 p), so the dropout
    probability is exactly t / 256 and kept entries are scaled by 256 / (256 - t)."""
    t = min(round(dropout_p * 256), 255)
    return t, 256 / (256 - t)


def draw_seed(device):
    """The dropout seed flash_attention draws: a 62-bit int64 on the device, from torch's generator for it, so
    reproducible under torch.manual_seed and fresh at every replay of a CUDA graph."""
    return torch.randint(2**62, (), dtype=torch.int64, device=device)


def _strides(x):
    return (x.stride(0), x.stride(1), x.stride(2), x.stride(3))


def _common_args(q, causal, doc_bounds, dropout_p, seed):
    B, H, T, D = q.shape
    has_docs = doc_bounds is not None
    ds, de = doc_bounds if has_docs else (q, q)  # never read without documents
    drop_t, drop_scale = dropout_threshold(dropout_p)
    meta = dict(HEAD_DIM=D, CAUSAL=bool(causal), HAS_DOCS=has_docs, DROPOUT=drop_t > 0, UPCAST=INTERPRET)
    return B, H, T, ds, de, (q if seed is None else seed, drop_t, drop_scale), meta


def _forward(q, k, v, o, lse, causal, sm_scale, doc_bounds=None, dropout_p=0.0, seed=None):
    """Fill o (B, H, T, D) and lse (B, H, T) fp32 (base-2 log-sum-exp of the scaled scores) in place; any strides
    for q, k, v, o; lse contiguous; seed an int64 tensor of one element (on q's device) when dropout_p > 0."""
    B, H, T, ds, de, drop, meta = _common_args(q, causal, doc_bounds, dropout_p, seed)
    grid = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_M"]))
    attn_fwd[grid](q, k, v, o, lse, ds, de, *drop, float(sm_scale), *_strides(q), *_strides(k), *_strides(v),
                   *_strides(o), H, T, triton.next_power_of_2(T), **meta)


def _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, doc_bounds=None, dropout_p=0.0, seed=None,
              deterministic=False):
    """Fill dq, dk, dv (B, H, T, D) and delta (B, H, T) fp32 (contiguous) in place, from the forward's o and lse.
    deterministic: dQ from a second pass over query blocks instead of fp32 atomics (bitwise reproducible)."""
    B, H, T, ds, de, drop, meta = _common_args(q, causal, doc_bounds, dropout_p, seed)
    _bwd_delta[(B * H, triton.cdiv(T, 64))](o, do, delta, *_strides(o), *_strides(do), H, T,
                                            HEAD_DIM=meta["HEAD_DIM"], BLOCK_M=64)
    # fp32 dQ for the atomics, laid out like dq; the deterministic pass writes dq directly
    dq_acc = dq if deterministic else _empty_bhtd(dq, torch.float32).zero_()
    args = (*drop, float(sm_scale), *_strides(q), *_strides(k), *_strides(v), *_strides(do))
    grid_n = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_N"]))
    attn_bwd[grid_n](q, k, v, do, dq_acc, dk, dv, lse, delta, ds, de, *args, *_strides(dq_acc), *_strides(dk),
                     *_strides(dv), H, T, triton.next_power_of_2(T), FUSE_DQ=not deterministic, **meta)
    if deterministic:
        grid_m = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_M"]))
        attn_bwd_dq[grid_m](q, k, v, do, dq, lse, delta, ds, de, *args, *_strides(dq),
                            H, T, triton.next_power_of_2(T), **meta)
    else:
        dq.copy_(dq_acc)


def _empty_bhtd(x, dtype=None):
    """An uninitialised (B, H, T, D) tensor laid out as (B, T, H, D) in memory: model.py's transpose(1, 2) back to
    (B, T, C) is then free."""
    B, H, T, D = x.shape
    return torch.empty(B, T, H, D, dtype=dtype or x.dtype, device=x.device).transpose(1, 2)


# Custom ops: to torch.compile each is one opaque node with a shape function (register_fake), so Dynamo traces
# the model as one graph and AOTAutograd puts the backward op in the backward graph. The kernels, their autotuning
# and the seed draw happen when the op runs, the same way compiled and eager.
@torch.library.custom_op("phi1::flash_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_starts: Optional[torch.Tensor],
            doc_ends: Optional[torch.Tensor], causal: bool, sm_scale: float, dropout_p: float,
            deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    seed = draw_seed(q.device) if dropout_threshold(dropout_p)[0] else q.new_zeros((), dtype=torch.int64)
    o = _empty_bhtd(q)  # (B, H, T, D)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    bounds = (doc_starts, doc_ends) if doc_starts is not None else None
    _forward(q, k, v, o, lse, causal, sm_scale, bounds, dropout_p, seed)
    return o, lse, seed


@_fwd_op.register_fake
def _(q, k, v, doc_starts, doc_ends, causal, sm_scale, dropout_p, deterministic):
    B, H, T, D = q.shape
    return (_empty_bhtd(q), q.new_empty(B, H, T, dtype=torch.float32), q.new_empty((), dtype=torch.int64))


@torch.library.custom_op("phi1::flash_attention_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, seed: torch.Tensor, doc_starts: Optional[torch.Tensor],
            doc_ends: Optional[torch.Tensor], causal: bool, sm_scale: float, dropout_p: float,
            deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _empty_bhtd(q), _empty_bhtd(k), _empty_bhtd(v)
    delta = torch.empty_like(lse)
    bounds = (doc_starts, doc_ends) if doc_starts is not None else None
    _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, bounds, dropout_p, seed, deterministic)
    return dq, dk, dv


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, seed, doc_starts, doc_ends, causal, sm_scale, dropout_p, deterministic):
    return _empty_bhtd(q), _empty_bhtd(k), _empty_bhtd(v)


def _setup_context(ctx, inputs, output):
    q, k, v, doc_starts, doc_ends, *ctx.args = inputs  # args: causal, sm_scale, dropout_p, deterministic
    o, lse, seed = output
    ctx.save_for_backward(q, k, v, o, lse, seed, doc_starts, doc_ends)


def _backward_op(ctx, do, _dlse, _dseed):
    q, k, v, o, lse, seed, doc_starts, doc_ends = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do, q, k, v, o, lse, seed, doc_starts, doc_ends, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_fwd_op.register_autograd(_backward_op, setup_context=_setup_context)


def flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0, deterministic=None):
    """softmax(sm_scale * q k^T, masked) v with dropout on the attention weights; q, k, v and the result (B, H, T, D).

    causal: each query sees keys at or before its position. sm_scale: defaults to 1/sqrt(D).
    doc_ids: (B, T) integers; a query sees only keys of its own document (a maximal run of equal ids).
    dropout_p: attention dropout probability (pass 0 in eval mode), rounded to a multiple of 1/256; the mask is
    regenerated in the backward pass. deterministic: bitwise reproducible gradients (dQ without atomics, ~2 more
    matmuls per score); None follows torch.use_deterministic_algorithms, as PyTorch's own attention does.
    Check flash_attention_supported() first; unsupported inputs raise ValueError.
    """
    if not flash_attention_supported(q, k, v, doc_ids):
        raise ValueError(f"flash_attention: unsupported inputs q{tuple(q.shape)} {q.dtype} on {q.device}, "
                         f"k{tuple(k.shape)}, v{tuple(v.shape)}, doc_ids "
                         f"{None if doc_ids is None else tuple(doc_ids.shape)} (see flash_attention_supported)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flash_attention: dropout_p must be in [0, 1), got {dropout_p}")
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    starts, ends = document_bounds(doc_ids) if doc_ids is not None else (None, None)
    o, _, _ = _fwd_op(q, k, v, starts, ends, bool(causal), sm_scale, float(dropout_p), bool(deterministic))
    return o


def dropout_mask(seed, B, H, T, dropout_p, device="cpu"):
    """The keep-mask (B, H, T, T) bool that the kernels apply for this seed (an int, or the int64 tensor of
    draw_seed): for tests and references."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    mask = torch.empty(B, H, T, T, dtype=torch.int8, device=device)
    block_m, block_n = (32, 64) if INTERPRET else (64, 128)
    _dropout_mask_kernel[(B * H, triton.cdiv(T, block_m))](mask, seed, dropout_threshold(dropout_p)[0], T,
                                                           BLOCK_M=block_m, BLOCK_N=block_n)
    return mask.bool()


# ----------------------------------------------------------------------------------------------------------------
# benchmark: python attention_kernel.py

BENCH_DOC = """Benchmark flash_attention against PyTorch SDPA (FLASH, CUDNN) and FlexAttention:
forward and forward+backward TFLOP/s, causal, on a CUDA GPU. --sass=True instead prints sm_90
machine-code statistics (no GPU needed).

    python attention_kernel.py "--shapes=8,32,2048,64;2,32,8192,64" --dropout=0,0.1 --doc_len=512
    python attention_kernel.py --sass=True"""
# (B, H, T, D)
BENCH_SHAPES = [(8, 32, 2048, 64), (16, 16, 2048, 64), (2, 32, 8192, 64), (4, 16, 4096, 128)]
BENCH_OPTIONS = {
    "shapes": (";".join(",".join(map(str, s)) for s in BENCH_SHAPES),
               "B,H,T,D;B,H,T,D;... the shapes to time"),
    "doc_len": (512, "mean document length of an extra document-masked case at the first shape;\n"
                     "0 = none"),
    "dropout": ("0,0.1", "dropout probabilities to run each shape at, comma-separated"),
    "dtype": ("bfloat16", "bfloat16 or float16"),
    "no_flex": (False, "True: skip FlexAttention (its compile takes a while)"),
    "sass": (False, "True: compile every kernel and config for sm_90 and print registers, spills\n"
                    "and instructions per loop, instead of the benchmark"),
}


def _parse_args(argv):
    args = configurator.parse(argv, BENCH_OPTIONS, BENCH_DOC)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s]
        assert shapes and all(len(s) == 4 for s in shapes)
    except (ValueError, AssertionError):
        raise UserError(f"--shapes must look like B,H,T,D;B,H,T,D, got {args.shapes!r}")
    try:
        dropout = [float(p) for p in args.dropout.split(",")]
        assert all(0 <= p < 1 for p in dropout)
    except (ValueError, AssertionError):
        raise UserError(f"--dropout must be probabilities in [0, 1) like 0,0.1, "
                        f"got {args.dropout!r}")
    if args.dtype not in ("bfloat16", "float16"):
        raise UserError(f"--dtype={args.dtype}: choose bfloat16 or float16")
    args.shapes, args.dropout = shapes, dropout
    return args


def _random_doc_ids(B, T, mean_len, device):
    """(B, T) int64 doc ids with document lengths drawn uniformly from [1, 2 * mean_len)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 2 * mean_len, (B, T), generator=g)  # more than enough documents
    starts = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        cuts = lengths[b].cumsum(0)
        cuts = cuts[cuts < T]
        starts[b, cuts] = 1
    return starts.cumsum(1).to(device)


def benchmark(argv):
    args = _parse_args(argv)
    if args.sass:
        return sass_report()
    if not torch.cuda.is_available() or INTERPRET:
        raise RunError("the benchmark needs a CUDA GPU (and TRITON_INTERPRET unset); "
                       "--sass=True needs none")
    flex = torch.compile(flex_attention)
    dtype = getattr(torch, args.dtype)

    cases = [(shape, None, p) for shape in args.shapes for p in args.dropout]
    if args.doc_len:
        cases.append((args.shapes[0], args.doc_len, 0.0))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, {args.dtype}, "
          f"causal; TFLOP/s (median of triton.testing.do_bench); fwd+bwd counts 3.5x the forward FLOPs; "
          f"det = ours with deterministic=True")
    print(f"{'case':<36} {'pass':<8} {'ours':>7} {'det':>7} {'FLASH':>7} {'CUDNN':>7} {'flex':>7} {'ours/CUDNN':>11}")
    for (B, H, T, D), doc_len, p in cases:
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        doc_ids = _random_doc_ids(B, T, doc_len, "cuda") if doc_len else None
        if doc_ids is None:
            pairs = B * T * T / 2  # (query, key) pairs per head: T^2/2 causal, the usual convention
            mask_mod = lambda b, h, qi, ki: qi >= ki
        else:
            counts = torch.stack([torch.bincount(d, minlength=int(doc_ids.max()) + 1) for d in doc_ids])  # (B, docs)
            pairs = float((counts * counts / 2).sum())  # only pairs inside a document count as work
            mask_mod = lambda b, h, qi, ki: (qi >= ki) & (doc_ids[b, qi] == doc_ids[b, ki])
        flops_fwd = 4 * H * D * pairs  # two matmuls of 2*D FLOPs per visible (query, key) pair
        impls = {"ours": lambda: flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=p),
                 "det": lambda: flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=p,
                                                deterministic=True)}
        if not args.no_flex and p == 0:  # FlexAttention has no dropout
            block_mask = create_block_mask(mask_mod, B, None, T, T, device="cuda")
            impls["flex"] = lambda: flex(q, k, v, block_mask=block_mask)
        for name, backend in (("FLASH", SDPBackend.FLASH_ATTENTION), ("CUDNN", SDPBackend.CUDNN_ATTENTION)):
            if doc_ids is None:  # neither backend takes a document mask
                impls[name] = lambda backend=backend: _sdpa(backend, q, k, v, p)
        label = f"B{B} H{H} T{T} D{D}" + (f" docs~{doc_len}" if doc_ids is not None else "") + \
            (f" dropout {p}" if p else "")
        for mode, factor in (("fwd", 1.0), ("fwd+bwd", 3.5)):
            tflops = {}
            for name, fn in impls.items():
                if name == "det" and mode == "fwd":  # the same forward as "ours"
                    continue
                step = fn if mode == "fwd" else (lambda fn=fn: torch.autograd.grad(fn(), (q, k, v), do))
                try:
                    ms = triton.testing.do_bench(step, return_mode="median")
                    tflops[name] = factor * flops_fwd / ms * 1e-9
                except Exception as e:  # one backend failing (unsupported shape) must not hide the others
                    print(f"  {name} {mode}: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            cell = lambda n: f"{tflops[n]:7.1f}" if n in tflops else f"{'n/a':>7}"
            ratio = f"{tflops['ours'] / tflops['CUDNN']:11.2f}" if "ours" in tflops and "CUDNN" in tflops else \
                f"{'n/a':>11}"
            print(f"{label:<36} {mode:<8} {cell('ours')} {cell('det')} {cell('FLASH')} {cell('CUDNN')} "
                  f"{cell('flex')} {ratio}", flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()


def _sdpa(backend, q, k, v, dropout_p):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


# ----------------------------------------------------------------------------------------------------------------
# python attention_kernel.py --sass: what each kernel compiles to on an H100, without one

def _compile_sm90(kernel, cfg, D, dropout, fuse_dq=True):
    """(registers, spilled bytes, [instructions of each loop]) of one kernel and config, compiled by Triton's own
    ptxas for sm_90, specialised as a real causal bf16 launch of model.py's fused qkv at T=2048 would be: pointers,
    strides and T divisible by 16, head-dim strides 1. A loop is a backward branch; its size is the number of SASS
    instructions from the branch target to the branch."""
    fn = kernel
    types = {"LSE": "*fp32", "DELTA": "*fp32", "DS": "*i32", "DE": "*i32", "SEED": "*i64", "MASK": "*i8",
             "DQ": "*fp32" if fuse_dq and fn is _attn_bwd else "*bf16", "drop_t": "i32", "drop_scale": "fp32",
             "sm_scale": "fp32", "H": "i32", "T": "i32", "T_BUCKET": "i32"}
    constexprs = dict(HEAD_DIM=D, CAUSAL=True, HAS_DOCS=False, DROPOUT=dropout, UPCAST=False, FUSE_DQ=fuse_dq,
                      BLOCK_M=cfg.kwargs["BLOCK_M"], BLOCK_N=cfg.kwargs["BLOCK_N"])
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs or name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"
            constexprs.setdefault(name, 1)
            continue
        signature[name] = types.get(name, "*bf16" if name.isupper() else "i32")
        if name not in ("drop_t", "drop_scale", "sm_scale"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compiler.compile(src, target=GPUTarget("cuda", 90, 32),
                                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    code = [(int(a, 16), text) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, text in code:
        target = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < addr:
            loops.append(sum(int(target.group(1), 16) <= a <= addr for a, _ in code))
    # STACK: the local-memory frame, > 0 only when registers spill (these kernels allocate no local arrays)
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return regs, stack, loops


def sass_report():
    """The table of docs/attention_kernel_tuning.md: per kernel, config and head dim, registers, spilled bytes and the
    instruction count of each loop (first the unmasked bulk, then the masked diagonal), without and with dropout."""
    if INTERPRET:
        raise RunError("--sass=True compiles for a GPU; unset TRITON_INTERPRET")
    print(f"triton {triton.__version__}, sm_90, causal bf16, no documents; regs / spilled bytes / SASS "
          f"instructions per loop; ratio = loop with dropout / without")
    print(f"{'kernel':<10} {'config':<15} {'D':>3} {'no dropout':<24} {'dropout':<24} ratio")
    kernels = [("forward", _attn_fwd, FWD_CONFIGS, True), ("bwd fused", _attn_bwd, BWD_CONFIGS, True),
               ("bwd dK/dV", _attn_bwd, BWD_CONFIGS, False), ("dQ (det)", _attn_bwd_dq, DQ_CONFIGS, True)]
    for name, kernel, configs, fuse in kernels:
        for cfg in configs:
            for D in (64, 128):
                label = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} s{cfg.num_stages}"
                (r0, s0, l0), (r1, s1, l1) = (_compile_sm90(kernel, cfg, D, drop, fuse) for drop in (False, True))
                ratio = " ".join(f"{b / a:.2f}" for a, b in zip(l0, l1))
                print(f"{name:<10} {label:<15} {D:>3} {f'{r0} / {s0} / {l0}':<24} {f'{r1} / {s1} / {l1}':<24} "
                      f"{ratio}", flush=True)


if __name__ == "__main__":
    configurator.cli(benchmark)
