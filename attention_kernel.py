"""
FlashAttention (forward and backward) written by hand in Triton: the attention of model.py on GPUs.

phi-1 (§2.3 of "Textbooks Are All You Need") was trained with FlashAttention and attention dropout 0.1. This file is
that attention, readable top to bottom:

    flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0) -> o     # all (B, H, T, D)

- forward (FlashAttention-2): one program per block of BLOCK_M queries streams blocks of BLOCK_N keys/values and keeps
  an online softmax in base 2 (fp32 running max and sum); it saves the log-sum-exp (LSE) for the backward pass.
- backward (FlashAttention-2): delta = rowsum(dO * O) first, then one kernel per key block for dK, dV and a separate
  kernel per query block for dQ; both recompute P from the LSE. No atomics, so gradients are bitwise reproducible.
- every key loop is split into stages: blocks that need no mask (the bulk) run a lean loop, only the blocks on the
  causal diagonal, at a document edge or at the sequence tail pay for masking.
- doc_ids (B, T): document masking for packed sequences. A token attends only to earlier tokens of its own document
  (a document is a maximal run of equal doc_ids); key blocks outside a query block's documents are never visited.
- dropout_p > 0: dropout on P inside the kernels, from a counter-based RNG (Philox, tl.rand) keyed on
  (seed, batch*head, query, key), regenerated in the backward pass; dropout_mask() materialises the same keep-mask.
- any T >= 1 (tail blocks masked), head dims 16/32/64/128, fp16/bf16 on GPU (and fp32 in the CPU interpreter),
  any strides (e.g. views of a fused qkv projection, without copies), 64-bit offsets for huge B*H*T.

flash_attention_supported(q, k, v) tells a caller when to fall back to PyTorch SDPA.

Run:
    python -m pytest -q tests/test_attention_kernel.py     # CPU, Triton interpreter (TRITON_INTERPRET=1)
    python attention_kernel.py                             # benchmark table on a CUDA GPU (vs SDPA, FlexAttention)
    python attention_kernel.py --help
"""
import argparse
import math
import os
import sys

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 the kernels run as numpy on the CPU: bf16 arithmetic is wrong there (numpy has no bf16),
# so every load is upcast to fp32, and autotuning (which times configs with a GPU clock) is replaced by one config.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): exp2 is the native instruction


# ----------------------------------------------------------------------------------------------------------------
# autotuning configs

def _configs(small, large):
    """Configs for one kernel: `small` (one fixed config) in the interpreter, the `large` candidates on a GPU.

    Each entry is (BLOCK_M, BLOCK_N, num_warps, num_stages). The interpreter costs ~35 ms per program instance, so its
    blocks are small enough to exercise multi-block loops on short test sequences but few enough to stay fast.
    """
    entries = [small] if INTERPRET else large
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in entries]


# Forward and dQ walk keys for a block of queries: BLOCK_M must be a multiple of BLOCK_N (the causal diagonal then
# starts on a key-block boundary). dK/dV walks queries for a block of keys: BLOCK_N must be a multiple of BLOCK_M.
# The H100 candidates and the reasoning behind them are in attention_kernel_tuning.md.
FWD_CONFIGS = _configs((32, 16, 4, 1), [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4),
                                         (128, 128, 8, 2), (64, 64, 4, 3)])
DKDV_CONFIGS = _configs((16, 32, 4, 1), [(32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 4),
                                          (64, 64, 4, 3)])
DQ_CONFIGS = _configs((32, 16, 4, 1), [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 4),
                                        (64, 32, 4, 4)])
# Retune only when something that changes the best config changes; T by power-of-two bucket, not every length.
TUNE_KEY = ["HEAD_DIM", "T_BUCKET", "CAUSAL", "HAS_DOCS", "DROPOUT"]


# ----------------------------------------------------------------------------------------------------------------
# pieces shared by the kernels

@triton.jit
def _keep(seed, bh, T, rows, cols, dropout_p):
    """Dropout keep-mask for entries (rows, cols) of P of head bh; rows/cols broadcast against each other.

    One Philox counter per (batch*head, query, key), in int64 so that B*H*T*T may exceed 2^31: forward, backward and
    dropout_mask() call this same function and so draw identical numbers.
    """
    offsets = (bh * T + rows.to(tl.int64)) * T + cols
    return tl.rand(seed, offsets) >= dropout_p


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
def _visible(offs_m, offs_n, ds_m, de_m, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Which (query, key) pairs may attend; offs_m/offs_n (and the queries' document bounds ds_m/de_m) are already
    broadcast to 2-D, as (M, 1)/(1, N) in the query-side kernels or (1, M)/(N, 1) in the key-side one. Queries past T
    are not masked here: the query-side kernels never store them, the key-side kernel masks them itself."""
    ok = offs_n < T
    if CAUSAL:
        ok = ok & (offs_n <= offs_m)
    if HAS_DOCS:
        ok = ok & (offs_n >= ds_m)
        if not CAUSAL:
            ok = ok & (offs_n < de_m)
    return ok


# ----------------------------------------------------------------------------------------------------------------
# forward

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, offs_d, ds_m,
               de_m, lo, hi, T, qk_scale, seed, bh, dropout_p, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
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
            p = tl.where(_keep(seed, bh, T, offs_m[:, None], offs_n[None, :], dropout_p), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
        kt_block += BLOCK_N * stride_kt
        v_block += BLOCK_N * stride_vt
    return acc, l_i, m_i


@triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY)
@triton.jit
def _attn_fwd(Q, K, V, O, LSE, DS, DE, seed, dropout_p, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd, stride_ob, stride_oh, stride_ot, stride_od,
              H, T, T_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
              UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Causal: the last query blocks have the most keys to visit, so they are launched first (longest job first keeps
    # the SMs busy at the end of the grid instead of waiting on a few long programs).
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # int64 from here on: b * stride_b can exceed 2^31
    b = bh // H
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
                                   offs_m, offs_d, ds_m, de_m, lo, s1, T, qk_scale, seed, bh, dropout_p,
                                   True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                               offs_m, offs_d, ds_m, de_m, s1, s2, T, qk_scale, seed, bh, dropout_p,
                               False, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)
    # the causal diagonal / the end of the document / the tail of the sequence
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                               offs_m, offs_d, ds_m, de_m, s2, hi, T, qk_scale, seed, bh, dropout_p,
                               True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)

    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)  # base-2 log-sum-exp of the scaled scores
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------------------
# backward

@triton.jit
def _bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_od, stride_dob, stride_doh, stride_dot,
               stride_dod, H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), (B*H, T) fp32: the sum_j P_ij dP_ij term of the softmax gradient (dropout included)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
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
def _dkdv_inner(dk, dv, k, v, q_base, do_base, stride_qt, stride_qd, stride_dot, stride_dod, LSE_bh, DELTA_bh, DS_b,
                DE_b, offs_n, offs_d, lo, hi, T, qk_scale, seed, bh, dropout_p, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr):
    """Accumulate dK, dV of one key block over the query blocks [lo, hi). Works on transposed tiles (keys x queries)
    so that P^T comes straight out of the dot and feeds dV = P^T dO without a transpose."""
    arange_m = tl.arange(0, BLOCK_M)
    qt_offs = arange_m[None, :] * stride_qt + offs_d[:, None] * stride_qd     # (D, BLOCK_M)
    do_offs = arange_m[:, None] * stride_dot + offs_d[None, :] * stride_dod  # (BLOCK_M, D)
    qt_block = q_base + lo.to(tl.int64) * stride_qt  # scalar pointers to the current query block
    do_block = do_base + lo.to(tl.int64) * stride_dot
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + arange_m
        if MASKED:
            row_ok = offs_m < T
            qt = tl.load(qt_block + qt_offs, mask=row_ok[None, :], other=0.0)
            do = tl.load(do_block + do_offs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE_bh + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
        else:
            qt = tl.load(qt_block + qt_offs)
            do = tl.load(do_block + do_offs)
            lse = tl.load(LSE_bh + offs_m)
            delta = tl.load(DELTA_bh + offs_m)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        pt = tl.exp2(tl.dot(k, qt) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M): P^T recomputed from the LSE
        if MASKED:
            if HAS_DOCS:
                ds_m = tl.load(DS_b + offs_m, mask=row_ok, other=0)
                de_m = tl.load(DE_b + offs_m, mask=row_ok, other=0)
            else:
                ds_m = offs_m
                de_m = offs_m
            ok = _visible(offs_m[None, :], offs_n[:, None], ds_m[None, :], de_m[None, :], T, CAUSAL, HAS_DOCS)
            pt = tl.where(ok & row_ok[None, :], pt, 0.0)
        dpt = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        if DROPOUT:
            keep = _keep(seed, bh, T, offs_m[None, :], offs_n[:, None], dropout_p)
            scale = 1.0 / (1.0 - dropout_p)
            dv = tl.dot(tl.where(keep, pt * scale, 0.0).to(do.dtype), do, dv)
            dpt = tl.where(keep, dpt * scale, 0.0)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv)
        dst = pt * (dpt - delta[None, :])  # dS^T, softmax backward
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk)
        qt_block += BLOCK_M * stride_qt
        do_block += BLOCK_M * stride_dot
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=TUNE_KEY)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, DS, DE, seed, dropout_p, sm_scale,
                   stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                   stride_vb, stride_vh, stride_vt, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
                   stride_dkb, stride_dkh, stride_dkt, stride_dkd, stride_dvb, stride_dvh, stride_dvt, stride_dvd,
                   H, T, T_BUCKET,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
                   UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program owns one key block and writes its dK, dV rows once (plain stores, no accumulation in memory),
    # so autotuning can rerun it freely and results never depend on scheduling.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    n0 = pid_n * BLOCK_N
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
    qk_scale = sm_scale * LOG2E

    lo, s1, s2, hi = _key_stages(DS, DE, b, n0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    LSE_bh = LSE + bh * T
    DELTA_bh = DELTA + bh * T
    DS_b = DS + b * T
    DE_b = DE + b * T
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, stride_qt, stride_qd, stride_dot, stride_dod, LSE_bh,
                         DELTA_bh, DS_b, DE_b, offs_n, offs_d, lo, s1, T, qk_scale, seed, bh, dropout_p,
                         True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, stride_qt, stride_qd, stride_dot, stride_dod, LSE_bh,
                         DELTA_bh, DS_b, DE_b, offs_n, offs_d, s1, s2, T, qk_scale, seed, bh, dropout_p,
                         False, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, stride_qt, stride_qd, stride_dot, stride_dod, LSE_bh,
                         DELTA_bh, DS_b, DE_b, offs_n, offs_d, s2, hi, T, qk_scale, seed, bh, dropout_p,
                         True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_M)

    dk = dk * sm_scale  # S = sm_scale * Q K^T
    tl.store(DK + b * stride_dkb + h * stride_dkh + keys * stride_dkt + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + b * stride_dvb + h * stride_dvh + keys * stride_dvt + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, offs_d,
              ds_m, de_m, lo, hi, T, qk_scale, seed, bh, dropout_p, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dQ of one query block over the key blocks [lo, hi)."""
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
            keep = _keep(seed, bh, T, offs_m[:, None], offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
        kt_block += BLOCK_N * stride_kt
        vt_block += BLOCK_N * stride_vt
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY)
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, DS, DE, seed, dropout_p, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kt, stride_kd,
                 stride_vb, stride_vh, stride_vt, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
                 stride_dqb, stride_dqh, stride_dqt, stride_dqd,
                 H, T, T_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # A separate pass over query blocks, instead of atomically adding dQ from the dK/dV programs: it recomputes
    # Q K^T once more but is deterministic and needs no zeroed fp32 buffer. Longest job first, as in the forward.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
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
        ds_m = tl.load(DS + b * T + offs_m, mask=row_ok, other=0)  # rows past T: see every key, so that l_i > 0
        de_m = tl.load(DE + b * T + offs_m, mask=row_ok, other=T)
    else:
        ds_m = offs_m
        de_m = offs_m
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E

    lo, s1, s2, hi = _query_stages(DS, DE, b, m0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if HAS_DOCS:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                       offs_d, ds_m, de_m, lo, s1, T, qk_scale, seed, bh, dropout_p,
                       True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                   offs_d, ds_m, de_m, s1, s2, T, qk_scale, seed, bh, dropout_p,
                   False, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd, offs_m,
                   offs_d, ds_m, de_m, s2, hi, T, qk_scale, seed, bh, dropout_p,
                   True, CAUSAL, HAS_DOCS, DROPOUT, UPCAST, BLOCK_N)

    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows * stride_dqt + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dropout_mask_kernel(MASK, seed, dropout_p, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep-mask of one query block of one head as int8, with the same _keep() the attention kernels use."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    rows = offs_m[:, None]
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)[None, :]
        keep = _keep(seed, bh, T, rows, cols, dropout_p)  # (BLOCK_M, BLOCK_N)
        tl.store(MASK + (bh * T + rows.to(tl.int64)) * T + cols, keep.to(tl.int8), mask=(rows < T) & (cols < T))


# ----------------------------------------------------------------------------------------------------------------
# Python side

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


def _strides(x):
    return (x.stride(0), x.stride(1), x.stride(2), x.stride(3))


def _common_args(q, causal, doc_bounds, dropout_p):
    B, H, T, D = q.shape
    has_docs = doc_bounds is not None
    ds, de = doc_bounds if has_docs else (q, q)  # never read without documents
    meta = dict(HEAD_DIM=D, CAUSAL=bool(causal), HAS_DOCS=has_docs, DROPOUT=dropout_p > 0, UPCAST=INTERPRET)
    return B, H, T, ds, de, meta


def _forward(q, k, v, o, lse, causal, sm_scale, doc_bounds=None, dropout_p=0.0, seed=0):
    """Fill o (B, H, T, D) and lse (B, H, T) fp32 (base-2 log-sum-exp of the scaled scores) in place; any strides
    for q, k, v, o; lse contiguous."""
    B, H, T, ds, de, meta = _common_args(q, causal, doc_bounds, dropout_p)
    grid = lambda cfg: (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
    _attn_fwd[grid](q, k, v, o, lse, ds, de, seed, float(dropout_p), float(sm_scale),
                    *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, T, triton.next_power_of_2(T), **meta)


def _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, doc_bounds=None, dropout_p=0.0, seed=0):
    """Fill dq, dk, dv (B, H, T, D) and delta (B, H, T) fp32 (contiguous) in place, from the forward's o and lse."""
    B, H, T, ds, de, meta = _common_args(q, causal, doc_bounds, dropout_p)
    _bwd_delta[(triton.cdiv(T, 64), B * H)](o, do, delta, *_strides(o), *_strides(do), H, T,
                                            HEAD_DIM=meta["HEAD_DIM"], BLOCK_M=64)
    args = (seed, float(dropout_p), float(sm_scale), *_strides(q), *_strides(k), *_strides(v), *_strides(do))
    grid_n = lambda cfg: (triton.cdiv(T, cfg["BLOCK_N"]), B * H)
    _attn_bwd_dkdv[grid_n](q, k, v, do, dk, dv, lse, delta, ds, de, *args, *_strides(dk), *_strides(dv),
                           H, T, triton.next_power_of_2(T), **meta)
    grid_m = lambda cfg: (triton.cdiv(T, cfg["BLOCK_M"]), B * H)
    _attn_bwd_dq[grid_m](q, k, v, do, dq, lse, delta, ds, de, *args, *_strides(dq),
                         H, T, triton.next_power_of_2(T), **meta)


def _empty_bhtd(x):
    """An uninitialised (B, H, T, D) tensor laid out as (B, T, H, D) in memory: model.py's transpose(1, 2) back to
    (B, T, C) is then free."""
    B, H, T, D = x.shape
    return torch.empty(B, T, H, D, dtype=x.dtype, device=x.device).transpose(1, 2)


class FlashAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, doc_ids, dropout_p):
        B, H, T, D = q.shape
        doc_bounds = document_bounds(doc_ids) if doc_ids is not None else None
        # Drawn from torch's default generator: reproducible under torch.manual_seed, fresh on every call.
        seed = int(torch.randint(0, 2**31 - 1, ())) if dropout_p > 0 else 0
        o = _empty_bhtd(q)  # (B, H, T, D)
        lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
        _forward(q, k, v, o, lse, causal, sm_scale, doc_bounds, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse, *(doc_bounds or ()))
        ctx.args = (causal, sm_scale, dropout_p, seed)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, *doc_bounds = ctx.saved_tensors
        causal, sm_scale, dropout_p, seed = ctx.args
        dq, dk, dv = _empty_bhtd(q), _empty_bhtd(k), _empty_bhtd(v)
        delta = torch.empty_like(lse)
        _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, doc_bounds or None, dropout_p, seed)
        return dq, dk, dv, None, None, None, None


# Opaque to torch.compile: a graph break around attention, rather than Dynamo tracing autotuned kernels and a seed drawn
# on the host (the compiled regions before and after still fuse as usual).
@torch.compiler.disable
def flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0):
    """softmax(sm_scale * q k^T, masked) v with dropout on the attention weights; q, k, v and the result (B, H, T, D).

    causal: each query sees keys at or before its position. sm_scale: defaults to 1/sqrt(D).
    doc_ids: (B, T) integers; a query sees only keys of its own document (a maximal run of equal ids).
    dropout_p: attention dropout probability (pass 0 in eval mode); the mask is regenerated in the backward pass.
    Check flash_attention_supported() first; unsupported inputs raise ValueError.
    """
    if not flash_attention_supported(q, k, v, doc_ids):
        raise ValueError(f"flash_attention: unsupported inputs q{tuple(q.shape)} {q.dtype} on {q.device}, "
                         f"k{tuple(k.shape)}, v{tuple(v.shape)}, doc_ids "
                         f"{None if doc_ids is None else tuple(doc_ids.shape)} (see flash_attention_supported)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flash_attention: dropout_p must be in [0, 1), got {dropout_p}")
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return FlashAttention.apply(q, k, v, causal, sm_scale, doc_ids, float(dropout_p))


def dropout_mask(seed, B, H, T, dropout_p, device="cpu"):
    """The keep-mask (B, H, T, T) bool that the kernels apply for this seed: for tests and references."""
    mask = torch.empty(B, H, T, T, dtype=torch.int8, device=device)
    block_m, block_n = (32, 64) if INTERPRET else (64, 128)
    _dropout_mask_kernel[(triton.cdiv(T, block_m), B * H)](mask, seed, float(dropout_p), T, BLOCK_M=block_m,
                                                           BLOCK_N=block_n)
    return mask.bool()


# ----------------------------------------------------------------------------------------------------------------
# benchmark: python attention_kernel.py

BENCH_SHAPES = [(8, 32, 2048, 64), (16, 16, 2048, 64), (2, 32, 8192, 64), (4, 16, 4096, 128)]  # (B, H, T, D)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Benchmark flash_attention against PyTorch SDPA (FLASH, CUDNN) and "
                                                 "FlexAttention: forward and forward+backward TFLOP/s, causal bf16.")
    parser.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in BENCH_SHAPES),
                        help="B,H,T,D;B,H,T,D;... (default: %(default)s)")
    parser.add_argument("--doc_len", type=int, default=512,
                        help="mean document length of the extra document-masked case at the first shape; 0 = none")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--no_flex", action="store_true", help="skip FlexAttention (its compile takes a while)")
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";") if s]
        assert shapes and all(len(s) == 4 for s in shapes)
    except (ValueError, AssertionError):
        parser.error(f"--shapes must look like B,H,T,D;B,H,T,D, got {args.shapes!r}")
    args.shapes = shapes
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


def benchmark(argv=None):
    args = _parse_args(argv)
    if not torch.cuda.is_available() or INTERPRET:
        sys.exit("attention_kernel.py: the benchmark needs a CUDA GPU (and TRITON_INTERPRET unset)")
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    dtype = getattr(torch, args.dtype)

    cases = [(shape, None) for shape in args.shapes]
    if args.doc_len:
        cases.append((args.shapes[0], args.doc_len))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, {args.dtype}, "
          f"causal; TFLOP/s (median of triton.testing.do_bench); fwd+bwd counts 3.5x the forward FLOPs")
    print(f"{'case':<34} {'pass':<8} {'ours':>7} {'FLASH':>7} {'CUDNN':>7} {'flex':>7} {'ours/CUDNN':>11}")
    for (B, H, T, D), doc_len in cases:
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
        block_mask = create_block_mask(mask_mod, B, None, T, T, device="cuda")
        impls = {"ours": lambda: flash_attention(q, k, v, causal=True, doc_ids=doc_ids),
                 "flex": None if args.no_flex else lambda: flex(q, k, v, block_mask=block_mask)}
        for name, backend in (("FLASH", SDPBackend.FLASH_ATTENTION), ("CUDNN", SDPBackend.CUDNN_ATTENTION)):
            if doc_ids is None:  # neither backend takes a document mask
                impls[name] = lambda backend=backend: _sdpa(F, sdpa_kernel, backend, q, k, v)
        label = f"B{B} H{H} T{T} D{D}" + (f" docs~{doc_len}" if doc_ids is not None else "")
        for mode, factor in (("fwd", 1.0), ("fwd+bwd", 3.5)):
            tflops = {}
            for name, fn in impls.items():
                if fn is None:
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
            print(f"{label:<34} {mode:<8} {cell('ours')} {cell('FLASH')} {cell('CUDNN')} {cell('flex')} {ratio}",
                  flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()


def _sdpa(F, sdpa_kernel, backend, q, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


if __name__ == "__main__":
    benchmark()
