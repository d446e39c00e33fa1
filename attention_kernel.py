"""
FlashAttention (forward and backward) written by hand in Triton: the attention of model.py on GPUs.

phi-1 (§2.3 of "Textbooks Are All You Need") was trained with FlashAttention and attention dropout
0.1. This file is that attention, readable top to bottom: first the algorithm in plain PyTorch
(flash_attention_tiles and its backward), then the Triton programs that run it, each mirroring it.

    flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0) -> o
    # q, k, v and o: (B, H, T, D)

- forward (FlashAttention-2): one program per block of BLOCK_M queries streams blocks of BLOCK_N
  keys/values and keeps an online softmax in base 2 (fp32 running max and sum); it saves the
  log-sum-exp (LSE) for the backward pass.
- backward: delta = rowsum(dO * O) first, then one program per key block recomputes P from the LSE
  once and produces dK, dV and that block's share of dQ (added into an fp32 buffer with atomics): 5
  matmuls per score, as FlashAttention-2.
- deterministic=True (or torch.use_deterministic_algorithms(True), as train.py --deterministic
  sets): bitwise reproducible results. dQ then comes from a second pass over query blocks (2 more
  matmuls per score) instead of atomics, and no kernel is autotuned: each runs one pinned
  configuration (the first of its candidates, FWD_CONFIGS, BWD_CONFIGS, DQ_CONFIGS) for every
  shape, so every process, rank and resumed run picks the same blocks, hence the same summation
  order. Otherwise the block shapes are autotuned by timing, per process.
- every key loop is split into stages: blocks that need no mask (the bulk) run a lean loop, only the
  blocks on the causal diagonal, at a document edge or at the sequence tail pay for masking.
- doc_ids (B, T): document masking for packed sequences. A token attends only to earlier tokens of
  its own document (a maximal run of equal doc_ids); key blocks outside a query block's documents
  are never visited.
- dropout_p > 0: dropout on P inside the kernels. One Philox call gives 16 bytes for 16 scores (as
  FlashAttention-2), keyed on a seed drawn on the device from torch's generator (reproducible under
  torch.manual_seed, CUDA-graph safe) and regenerated in the backward pass; dropout_mask()
  materialises the same keep-mask. p is rounded to a multiple of 1/256 (0.1 -> 26/256) and kept
  entries are scaled by exactly 1/(1 - that p).
- any T >= 1 (tail blocks masked), head dims 16/32/64/128, fp16/bf16 on GPU (and fp32 in the CPU
  interpreter), any strides (e.g. views of a fused qkv projection, without copies), 64-bit offsets
  for huge B*H*T.
- registered as PyTorch custom ops (torch.library), so torch.compile(fullgraph=True) traces
  through it.

flash_attention_supported(q, k, v) tells a caller when to fall back to PyTorch SDPA.

Run:
    python -m pytest -q tests/test_attention_kernel.py  # CPU, Triton interpreter
    python bench.py attention    # TFLOP/s on a CUDA GPU, beside SDPA and FlexAttention
    python bench.py sass         # sm_90 registers, spills, instructions per loop; no GPU needed
"""
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 the kernels run as numpy on the CPU: bf16 arithmetic is wrong there
# (numpy has no bf16), so _load upcasts every tile to fp32 (UPCAST), and autotuning (which times
# configs with a GPU clock) is replaced by one config.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
UPCAST = tl.constexpr(INTERPRET)
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)); exp2 is one instruction


# ------------------------------------------------------------------------------------------------
# The algorithm in PyTorch: what the Triton programs compute, tile by tile, with their names

def flash_attention_tiles(q, k, v, mask, BLOCK_M=16, BLOCK_N=16):
    """FlashAttention-2's forward over tiles: o (B, H, T, D), as attention_reference's, and lse.

    mask: (B or 1, 1, T, T) bool, True = attend. Each block of BLOCK_M queries (one _attn_fwd
    program) streams the key blocks once (the loop of _fwd_inner), never holding a row of T scores:
    it keeps the running max m_i and sum l_i of its rows and acc = sum_j exp2(s_j - m_i) v_j, and
    rescales both by alpha = exp2(m_old - m_new) whenever the max grows. Scores are in base 2
    (s = q.k * sm_scale * log2 e), and lse = m_i + log2(l_i) is what the backward needs of the
    softmax. The kernels skip blocks the mask hides entirely; here a hidden block changes nothing
    (p = 0, alpha = 1). The last blocks are shorter when the block sizes do not divide T.
    """
    B, H, T, D = q.shape
    qk_scale = D ** -0.5 * LOG2E.value
    o = torch.empty(B, H, T, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    for m0 in range(0, T, BLOCK_M):
        rows = slice(m0, m0 + BLOCK_M)
        q_blk = q[:, :, rows].float()  # (B, H, BLOCK_M, D)
        m_i = torch.full(q_blk.shape[:-1], -1.0e30, device=q.device)  # finite: see _attn_fwd
        l_i = torch.zeros_like(m_i)  # (B, H, BLOCK_M)
        acc = torch.zeros_like(q_blk)  # (B, H, BLOCK_M, D)
        for n0 in range(0, T, BLOCK_N):
            cols = slice(n0, n0 + BLOCK_N)
            qk = q_blk @ k[:, :, cols].float().transpose(-1, -2)  # (B, H, BLOCK_M, BLOCK_N)
            qk = qk.masked_fill(~mask[:, :, rows, cols], float("-inf"))
            m_new = torch.maximum(m_i, qk.amax(-1) * qk_scale)
            p = torch.exp2(qk * qk_scale - m_new[..., None])  # (B, H, BLOCK_M, BLOCK_N)
            alpha = torch.exp2(m_i - m_new)
            l_i = l_i * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ v[:, :, cols].float()
            m_i = m_new
        o[:, :, rows] = acc / l_i[..., None]
        lse[:, :, rows] = m_i + torch.log2(l_i)
    return o, lse


# The backward of o = P V, P = softmax(S) row by row, S = sm_scale * Q K^T, given dO:
#   dV = P^T dO and dP = dO V^T, as for any matmul.
#   Softmax: the derivative of P_ij by S_ik is P_ij (1[j = k] - P_ik), so
#   dS_ik = sum_j dP_ij P_ij (1[j = k] - P_ik) = P_ik (dP_ik - delta_i), delta_i = sum_j P_ij dP_ij:
#   dS = P * (dP - delta).
#   delta needs no row of T scores: sum_j P_ij dP_ij = sum_j P_ij (dO_i . v_j)
#   = dO_i . (sum_j P_ij v_j) = dO_i . O_i, so delta = rowsum(dO * O), computed first (_bwd_delta).
#   (With dropout O = (P * Z) V / (1 - p), Z the keep-mask: the gradient of P is dP * Z / (1 - p),
#   and the same steps give delta = rowsum(dO * O) again.)
#   dQ = sm_scale dS K and dK = sm_scale dS^T Q.
# P itself is recomputed tile by tile from the forward's lse: P = exp2(S * log2 e - lse).

def flash_attention_tiles_backward(q, k, v, mask, o, lse, do, BLOCK_M=16, BLOCK_N=16):
    """(dq, dk, dv) (B, H, T, D) of flash_attention_tiles from its o and lse, as _attn_bwd computes
    them: one key block per program (the outer loop), the query blocks in its inner loop
    (_bwd_inner), dK and dV accumulated in the program, dQ's shares added into a shared buffer."""
    B, H, T, D = q.shape
    sm_scale = D ** -0.5
    qk_scale = sm_scale * LOG2E.value
    delta = (do.float() * o.float()).sum(-1)  # (B, H, T): rowsum(dO * O)
    dq = torch.zeros(B, H, T, D, dtype=torch.float32, device=q.device)
    dk, dv = torch.zeros_like(dq), torch.zeros_like(dq)
    for n0 in range(0, T, BLOCK_N):
        cols = slice(n0, n0 + BLOCK_N)
        k_blk, v_blk = k[:, :, cols].float(), v[:, :, cols].float()  # (B, H, BLOCK_N, D)
        for m0 in range(0, T, BLOCK_M):
            rows = slice(m0, m0 + BLOCK_M)
            q_blk, do_blk = q[:, :, rows].float(), do[:, :, rows].float()  # (B, H, BLOCK_M, D)
            qk = q_blk @ k_blk.transpose(-1, -2)  # (B, H, BLOCK_M, BLOCK_N)
            p = torch.exp2(qk * qk_scale - lse[:, :, rows, None])  # P again, from the LSE
            p = p.masked_fill(~mask[:, :, rows, cols], 0.0)
            dv[:, :, cols] += p.transpose(-1, -2) @ do_blk
            dp = do_blk @ v_blk.transpose(-1, -2)  # (B, H, BLOCK_M, BLOCK_N)
            ds = p * (dp - delta[:, :, rows, None])
            dk[:, :, cols] += ds.transpose(-1, -2) @ q_blk
            dq[:, :, rows] += ds @ k_blk * sm_scale  # the kernel: atomic adds into fp32 dQ
        dk[:, :, cols] *= sm_scale
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# Shared by the kernels: loads, masks, stages, dropout

@triton.jit
def _load(ptrs, mask):
    """A tile for tl.dot: tl.load, 0 where mask is False (mask None: no mask, the lean path).
    The one interpreter-only branch: under TRITON_INTERPRET the tile is upcast to fp32 (UPCAST)."""
    if mask is None:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _doc_bounds(DS_b, DE_b, offs, T, HAS_DOCS: tl.constexpr):
    """The first position of each token's document and the first one after it (the positions
    themselves without documents, never read then). Past T: (0, T), so such rows see every key and
    the forward's l_i stays > 0."""
    if HAS_DOCS:
        ok = offs < T
        return tl.load(DS_b + offs, mask=ok, other=0), tl.load(DE_b + offs, mask=ok, other=T)
    return offs, offs


@triton.jit
def _visible(queries, offs_n, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Which (query, key) pairs may attend, (BLOCK_M, BLOCK_N); queries = (m0, ds_m, de_m): the
    first query's position and the document bounds of the BLOCK_M query rows. Queries past T are
    not masked here: the forward and dQ kernels never store them, the dK/dV kernel masks them."""
    m0, ds_m, de_m = queries
    offs_m = m0 + tl.arange(0, ds_m.shape[0])
    offs_n = offs_n[None, :]
    ok = offs_n < T
    if CAUSAL:
        ok = ok & (offs_n <= offs_m[:, None])
    if HAS_DOCS:
        ok = ok & (offs_n >= ds_m[:, None])
        if not CAUSAL:
            ok = ok & (offs_n < de_m[:, None])
    return ok


@triton.jit
def _query_stages(DS_b, DE_b, m0, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key ranges for the query block [m0, m0 + BLOCK_M): (lo, s1, s2, hi), masked [lo, s1),
    unmasked [s1, s2), masked [s2, hi).

    Keys outside [lo, hi) are masked for every query of the block and are skipped. Inside, only
    [s1, s2) is known to be fully visible (no causal, document or tail mask): keys at or after the
    start of the last query's document, before the first query (causal) or before the end of the
    first query's document (non-causal), below T. Boundaries that are followed by another stage are
    multiples of BLOCK_N, so no key is visited twice. DS_b/DE_b hold, per token of this sequence,
    the first position of its document and the first position after it.
    """
    last = tl.minimum(m0 + BLOCK_M, T) - 1
    if HAS_DOCS:
        lo = tl.load(DS_b + m0) // BLOCK_N * BLOCK_N
        s1 = tl.cdiv(tl.load(DS_b + last), BLOCK_N) * BLOCK_N
        end_first = tl.load(DE_b + m0)
        end_last = tl.load(DE_b + last)
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
def _key_stages(DS_b, DE_b, n0, T, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query ranges for the key block [n0, n0 + BLOCK_N), mirroring _query_stages: (lo, s1, s2, hi),
    masked [lo, s1), unmasked [s1, s2), masked [s2, hi). Boundaries followed by another stage are
    multiples of BLOCK_M."""
    last = tl.minimum(n0 + BLOCK_N, T) - 1
    if HAS_DOCS:
        start_first = tl.load(DS_b + n0) // BLOCK_M * BLOCK_M
        start_last = tl.cdiv(tl.load(DS_b + last), BLOCK_M) * BLOCK_M
        s2 = tl.load(DE_b + n0) // BLOCK_M * BLOCK_M
        hi = tl.load(DE_b + last)
    else:
        start_first = n0 * 0
        start_last = start_first
        s2 = T // BLOCK_M * BLOCK_M
        hi = start_first + T
    if CAUSAL:  # queries before the key block see none of it; the diagonal block needs the mask
        lo = n0
        s1 = n0 + BLOCK_N
    else:
        lo = start_first
        s1 = start_last
    s1 = tl.minimum(tl.maximum(s1, lo), hi)
    s2 = tl.minimum(tl.maximum(s2, s1), hi)
    return lo, s1, s2, hi


@triton.jit
def _dropout_state(SEED, bh, drop_t, DROPOUT: tl.constexpr):
    """(seed, bh, drop_t), what _keep needs. The seed is read on the device: a launch argument
    would be frozen by CUDA graphs and, as a Python int, specialised by Triton (a seed divisible by
    16 would compile new kernels)."""
    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    return seed, bh, drop_t


@triton.jit
def _philox(seed, c0, c1, c2, c3):
    """tl.philox(seed, c0, c1, c2, c3) bit for bit (Philox-4x32-10, key = the 64-bit seed), with
    each round's two 32 x 32-bit products taken whole, as 64-bit products: one IMAD.WIDE each on
    sm_90, where tl.philox's separate high and low halves (umulhi, mul) take two."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    for _ in tl.static_range(10):
        b_c2 = c2.to(tl.uint64) * 0xCD9E8D57
        a_c0 = c0.to(tl.uint64) * 0xD2511F53
        c0 = (b_c2 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (a_c0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = b_c2.to(tl.uint32)
        c3 = a_c0.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _bytes_on_top(w):
    """(..., 2, 2) uint32: the words w shifted so that byte 2*i + j is their top byte, at
    [..., j, i]. Then byte >= t is one compare: (w << 8 * (3 - byte)) >= t << 24."""
    return tl.join(tl.join(w << 24, w << 16), tl.join(w << 8, w))


@triton.jit
def _keep(dropout, m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout keep-mask (BLOCK_M, BLOCK_N) for the P tile whose first query is m0 and first key n0
    (m0 % 16 == 0, n0 % 32 == 0); dropout = (seed, bh, drop_t) of _dropout_state: entry (i, j) of
    head bh is kept when its random byte is >= drop_t = round(256 p).

    One Philox call (4 x 32 bits) serves 16 entries: queries {i, i + 8} x keys {j, j + 1} +
    {0, 8, 16, 24}, with counter (key group, query group, bh) = ((j // 32) * 4 + j % 8 // 2,
    (i // 16) * 8 + i % 8, bh). Those 16 are exactly what one thread holds of a tensor-core
    accumulator tile (mma.sync and wgmma), so every Philox output is used in the thread that
    computes it. Entry (i, j) takes word j // 8 % 4, byte 2 * (i // 8 % 2) + j % 2.
    """
    seed, bh, drop_t = dropout
    # Counters laid out (c, a, r, q): Triton's default layout for that order is the accumulator's
    # (a on warps, r and q on lanes, c in registers), so the words need no trip through shared
    # memory (except where the accumulator's layout replicates warps, as 64x64 tiles on 8 warps)
    c = tl.arange(0, BLOCK_N // 32)[:, None, None, None]
    a = tl.arange(0, BLOCK_M // 16)[None, :, None, None]
    r = tl.arange(0, 8)[None, None, :, None]
    q = tl.arange(0, 4)[None, None, None, :]
    query_group = (m0 // 2 + a * 8 + r).to(tl.uint32)  # (1, M/16, 8, 1)
    key_group = (n0 // 8 + c * 4 + q).to(tl.uint32)    # (N/32, 1, 1, 4)
    key_group, query_group = tl.broadcast(key_group, query_group)
    w0, w1, w2, w3 = _philox(seed.to(tl.uint64), key_group, query_group, bh.to(tl.uint32),
                             tl.zeros_like(key_group))
    words = tl.join(tl.join(_bytes_on_top(w0), _bytes_on_top(w1)),
                    tl.join(_bytes_on_top(w2), _bytes_on_top(w3)))
    # (c, a, r, q, key bit 0, query bit 3, key bit 3, key bit 4) -> (query, key)
    words = tl.reshape(tl.permute(words, (1, 5, 2, 0, 7, 6, 3, 4)), (BLOCK_M, BLOCK_N))
    return words >= drop_t.to(tl.uint32) << 24  # each entry's byte, on top, >= drop_t


@triton.jit
def _dropout_mask_kernel(MASK, SEED, drop_t, T, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep-mask of one query block of one head as int8, with the kernels' _keep()."""
    bh = tl.program_id(0).to(tl.int64)
    m0 = tl.program_id(1) * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)[:, None]
    dropout = _dropout_state(SEED, bh, drop_t, DROPOUT=True)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)[None, :]
        keep = _keep(dropout, m0, start, BLOCK_M, BLOCK_N)  # (BLOCK_M, BLOCK_N)
        tl.store(MASK + (bh * T + rows.to(tl.int64)) * T + cols, keep.to(tl.int8),
                 mask=(rows < T) & (cols < T))


# ------------------------------------------------------------------------------------------------
# Forward: flash_attention_tiles, one program per query block

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, Kh, Vh, queries, start, end, T, qk_scale, dropout,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
               DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr):
    """The inner loop of flash_attention_tiles over the key blocks [start, end): the online softmax
    in base 2 with fp32 statistics. Kh, Vh: (this head's pointer, stride between tokens, stride
    within a head); queries: (m0, ds_m, de_m) of _visible; dropout: see _keep."""
    BLOCK_M: tl.constexpr = q.shape[0]
    K_bh, stride_kt, stride_kd = Kh
    V_bh, stride_vt, stride_vd = Vh
    arange_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, q.shape[1])
    kt_offs = arange_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
    v_offs = arange_n[:, None] * stride_vt + offs_d[None, :] * stride_vd   # (BLOCK_N, D)
    kt_block = K_bh + start.to(tl.int64) * stride_kt  # scalar pointers to the current key block
    v_block = V_bh + start.to(tl.int64) * stride_vt
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + arange_n
        kt = _load(kt_block + kt_offs, offs_n[None, :] < T if MASKED else None)  # (D, BLOCK_N)
        v = _load(v_block + v_offs, offs_n[:, None] < T if MASKED else None)     # (BLOCK_N, D)
        qk = tl.dot(q, kt)  # (BLOCK_M, BLOCK_N), fp32
        if MASKED:
            qk = tl.where(_visible(queries, offs_n, T, CAUSAL, HAS_DOCS), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax denominator counts dropped entries too
        acc = acc * alpha[:, None]
        if DROPOUT:  # 1/(1-p) is applied once at the end
            # an opaque zero (0 * m_new, per row): with a literal 0 the compiler moves the select
            # past the bf16 conversion below, where it costs two instructions per score, not one
            p = tl.where(_keep(dropout, queries[0], start_n, BLOCK_M, BLOCK_N), p,
                         (m_new * 0.0)[:, None])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
        kt_block += BLOCK_N * stride_kt
        v_block += BLOCK_N * stride_vt
    return acc, l_i, m_i


@triton.jit
def _query_block(H, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """(bh, b, h, m0) of a program over query blocks (forward, dQ): head bh = b * H + h on grid
    axis 0 (up to 2^31 programs; axis 1 stops at 65535), int64 (b * stride_b can exceed 2^31), and
    its first query m0. Causal: the last query blocks have the most keys to visit, so they are
    launched first (longest job first keeps the SMs busy at the end of the grid instead of waiting
    on a few long ones)."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0,
                     "query blocks: BLOCK_M must be a multiple of BLOCK_N (causal diagonal)")
    tl.static_assert(not DROPOUT or (BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0),
                     "dropout: 16 x 32 tiles (_keep)")
    bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1) if CAUSAL else tl.program_id(1)
    return bh, bh // H, bh % H, pid_m * BLOCK_M


@triton.jit(do_not_specialize=["drop_t"])
def _attn_fwd(Q, K, V, O, LSE, DS, DE, SEED, drop_t, drop_scale, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd,
              stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd,
              stride_ob, stride_oh, stride_ot, stride_od, H, T, T_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """One query block of flash_attention_tiles: o and the base-2 LSE of its rows."""
    bh, b, h, m0 = _query_block(H, CAUSAL, DROPOUT, BLOCK_M, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = offs_m[:, None].to(tl.int64)
    q = _load(Q + b * stride_qb + h * stride_qh + rows * stride_qt + offs_d[None, :] * stride_qd,
              row_ok[:, None])  # (BLOCK_M, D)
    ds_m, de_m = _doc_bounds(DS + b * T, DE + b * T, offs_m, T, HAS_DOCS)
    dropout = _dropout_state(SEED, bh, drop_t, DROPOUT)

    # m_i starts at a finite floor, not -inf: a row whose keys so far were all masked (possible
    # with documents) then gets exp2(-inf - floor) = 0 instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    Kh = (K + b * stride_kb + h * stride_kh, stride_kt, stride_kd)  # this head's keys
    Vh = (V + b * stride_vb + h * stride_vh, stride_vt, stride_vd)
    # keys [lo, s1) masked (before the last query's document start), [s1, s2) the unmasked bulk,
    # [s2, hi) masked (the causal diagonal, the end of the document, the tail of the sequence)
    stages = _query_stages(DS + b * T, DE + b * T, m0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    for s in tl.static_range(3):
        if HAS_DOCS or s > 0:  # without documents lo == s1
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, Kh, Vh, (m0, ds_m, de_m),
                                       start=stages[s], end=stages[s + 1], T=T,
                                       qk_scale=sm_scale * LOG2E, dropout=dropout,
                                       MASKED=s != 1, CAUSAL=CAUSAL, HAS_DOCS=HAS_DOCS,
                                       DROPOUT=DROPOUT, BLOCK_N=BLOCK_N)

    acc = acc / l_i[:, None]
    if DROPOUT:
        acc = acc * drop_scale
    # the base-2 log-sum-exp of the scaled scores, for the backward
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)
    tl.store(O + b * stride_ob + h * stride_oh + rows * stride_ot + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# ------------------------------------------------------------------------------------------------
# Backward: flash_attention_tiles_backward, one program per key block (derivation above it)

@triton.jit
def _bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_ot, stride_od,
               stride_dob, stride_doh, stride_dot, stride_dod, H, T,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), (B*H, T) fp32: sum_j P_ij dP_ij (dropout included)."""
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < T
    rows = offs_m[:, None].to(tl.int64)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows * stride_ot + offs_d[None, :] * stride_od,
                mask=row_ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows * stride_dot
                 + offs_d[None, :] * stride_dod, mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_inner(dk, dv, k, v, Qh, DOh, DQh, rows, n0, start, end, T, scales, dropout,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
               DROPOUT: tl.constexpr, FUSE_DQ: tl.constexpr, BLOCK_M: tl.constexpr):
    """The inner loop of flash_attention_tiles_backward for the key block at n0, over the query
    blocks [start, end): P recomputed once from the LSE, then dV += P^T dO, dK += dS^T Q and
    (FUSE_DQ) dQ += dS K added to the fp32 dQ rows with atomics.

    Qh, DOh, DQh: (this head's pointer, stride between tokens, stride within a head); rows: (LSE,
    DELTA of this head, DS, DE of this sequence); scales: (qk_scale, sm_scale * drop_scale,
    keep_prob = 1 - p); dropout: see _keep. Tiles are (queries, keys), as in the forward, so the
    dropout bits come out of _keep the same way; P^T and dS^T go to the matmuls via shared memory,
    as in FlashAttention-2."""
    Q_bh, stride_qt, stride_qd = Qh
    DO_bh, stride_dot, stride_dod = DOh
    DQ_bh, stride_dqt, stride_dqd = DQh
    LSE_bh, DELTA_bh, DS_b, DE_b = rows
    qk_scale, dq_scale, keep_prob = scales
    BLOCK_N: tl.constexpr = k.shape[0]
    arange_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, k.shape[1])
    offs_n = n0 + tl.arange(0, BLOCK_N)
    # Offsets within the head, int32 (flash_attention_supported checks that they fit): this loop
    # runs at the register limit, and 64-bit pointers carried from stage to stage spill there
    q_offs = arange_m[:, None] * stride_qt + offs_d[None, :] * stride_qd     # (BLOCK_M, D)
    do_offs = arange_m[:, None] * stride_dot + offs_d[None, :] * stride_dod  # (BLOCK_M, D)
    dq_offs = arange_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd  # (BLOCK_M, D)
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + arange_m
        row_ok = offs_m < T
        rows_ok = row_ok[:, None] if MASKED else None
        q = _load(Q_bh + (start_m * stride_qt + q_offs), rows_ok)     # (BLOCK_M, D)
        do = _load(DO_bh + (start_m * stride_dot + do_offs), rows_ok)  # (BLOCK_M, D)
        if MASKED:
            lse = tl.load(LSE_bh + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(DELTA_bh + offs_m, mask=row_ok, other=0.0)
        else:
            lse = tl.load(LSE_bh + offs_m)
            delta = tl.load(DELTA_bh + offs_m)
        # P, from the LSE: (BLOCK_M, BLOCK_N)
        p = tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if MASKED:
            ds_m, de_m = _doc_bounds(DS_b, DE_b, offs_m, T, HAS_DOCS)
            ok = _visible((start_m, ds_m, de_m), offs_n, T, CAUSAL, HAS_DOCS)
            p = tl.where(ok & row_ok[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        if DROPOUT:
            # O = (P * Z) V / (1 - p), Z the keep-mask: dV = (P * Z)^T dO / (1 - p) and
            # dS = P * (dP * Z / (1 - p) - delta) = (P * Z * dP - P * delta (1 - p)) / (1 - p),
            # each 1/(1 - p) applied once per program (to dV, dK and dQ), not per score
            p_kept = tl.where(_keep(dropout, start_m, n0, BLOCK_M, BLOCK_N), p, 0.0)
            dv = tl.dot(tl.trans(p_kept.to(do.dtype)), do, dv)
            ds = p_kept * dp - p * (delta * keep_prob)[:, None]
        else:
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
        ds = ds.to(q.dtype)
        dk = tl.dot(tl.trans(ds), q, dk)
        if FUSE_DQ:
            dq = tl.dot(ds, k) * dq_scale  # (BLOCK_M, D), this key block's share
            tl.atomic_add(DQ_bh + (start_m * stride_dqt + dq_offs), dq, mask=rows_ok,
                          sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["drop_t"])
def _attn_bwd(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, DS, DE, SEED, drop_t, drop_scale, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd,
              stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd,
              stride_dob, stride_doh, stride_dot, stride_dod,
              stride_dqb, stride_dqh, stride_dqt, stride_dqd,
              stride_dkb, stride_dkh, stride_dkt, stride_dkd,
              stride_dvb, stride_dvh, stride_dvt, stride_dvd, H, T, T_BUCKET,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, FUSE_DQ: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of flash_attention_tiles_backward: its dK, dV rows, written once, and with
    FUSE_DQ its shares of dQ, added into the fp32 dQ buffer (zeroed by the caller), whose sums then
    depend on the order the programs run in."""
    tl.static_assert(BLOCK_N % BLOCK_M == 0,
                     "dK/dV: BLOCK_N must be a multiple of BLOCK_M (causal diagonal)")
    tl.static_assert(not DROPOUT or (BLOCK_M % 16 == 0 and BLOCK_N % 32 == 0),
                     "dropout: 16 x 32 tiles (_keep)")
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    n0 = tl.program_id(1) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < T
    keys = offs_n[:, None].to(tl.int64)
    k = _load(K + b * stride_kb + h * stride_kh + keys * stride_kt + offs_d[None, :] * stride_kd,
              key_ok)  # (BLOCK_N, D)
    v = _load(V + b * stride_vb + h * stride_vh + keys * stride_vt + offs_d[None, :] * stride_vd,
              key_ok)  # (BLOCK_N, D)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    Qh = (Q + b * stride_qb + h * stride_qh, stride_qt, stride_qd)  # this head's queries
    DOh = (DO + b * stride_dob + h * stride_doh, stride_dot, stride_dod)
    DQh = (DQ + b * stride_dqb + h * stride_dqh, stride_dqt, stride_dqd)
    rows = (LSE + bh * T, DELTA + bh * T, DS + b * T, DE + b * T)
    # (drop_scale is 1 without dropout; keep_prob = 1 - p)
    scales = (sm_scale * LOG2E, sm_scale * drop_scale, 1.0 / drop_scale)
    dropout = _dropout_state(SEED, bh, drop_t, DROPOUT)
    # queries [lo, s1) masked, [s1, s2) the unmasked bulk, [s2, hi) masked (see _key_stages)
    stages = _key_stages(DS + b * T, DE + b * T, n0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    for s in tl.static_range(3):
        dk, dv = _bwd_inner(dk, dv, k, v, Qh, DOh, DQh, rows, n0, start=stages[s],
                            end=stages[s + 1], T=T, scales=scales, dropout=dropout,
                            MASKED=s != 1, CAUSAL=CAUSAL, HAS_DOCS=HAS_DOCS, DROPOUT=DROPOUT,
                            FUSE_DQ=FUSE_DQ, BLOCK_M=BLOCK_M)

    dk = dk * sm_scale  # S = sm_scale * Q K^T
    if DROPOUT:  # the 1/(1 - p) left out of _bwd_inner's dropout branch
        dk = dk * drop_scale
        dv = dv * drop_scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + keys * stride_dkt
             + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + b * stride_dvb + h * stride_dvh + keys * stride_dvt
             + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, Kh, Vh, queries, start, end, T, qk_scale, dropout,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
              DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Deterministic backward only: flash_attention_tiles_backward's dQ gathered per query block,
    over the key blocks [start, end), P recomputed once more; the arguments as _fwd_inner's, 1 - p
    in dropout[3]."""
    BLOCK_M: tl.constexpr = q.shape[0]
    K_bh, stride_kt, stride_kd = Kh
    V_bh, stride_vt, stride_vd = Vh
    seed, bh, drop_t, keep_prob = dropout
    arange_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, q.shape[1])
    kt_offs = arange_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
    vt_offs = arange_n[None, :] * stride_vt + offs_d[:, None] * stride_vd  # (D, BLOCK_N)
    kt_block = K_bh + start.to(tl.int64) * stride_kt  # scalar pointers to the current key block
    vt_block = V_bh + start.to(tl.int64) * stride_vt
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + arange_n
        kt = _load(kt_block + kt_offs, offs_n[None, :] < T if MASKED else None)  # (D, BLOCK_N)
        vt = _load(vt_block + vt_offs, offs_n[None, :] < T if MASKED else None)  # (D, BLOCK_N)
        p = tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            p = tl.where(_visible(queries, offs_n, T, CAUSAL, HAS_DOCS), p, 0.0)
        dp = tl.dot(do, vt)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:  # as in _bwd_inner, 1/(1 - p) applied once, to dQ at the end
            p_kept = tl.where(_keep((seed, bh, drop_t), queries[0], start_n, BLOCK_M, BLOCK_N),
                              p, 0.0)
            ds = p_kept * dp - p * (delta * keep_prob)[:, None]
        else:
            ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
        kt_block += BLOCK_N * stride_kt
        vt_block += BLOCK_N * stride_vt
    return dq


@triton.jit(do_not_specialize=["drop_t"])
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, DS, DE, SEED, drop_t, drop_scale, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_qd,
                 stride_kb, stride_kh, stride_kt, stride_kd,
                 stride_vb, stride_vh, stride_vt, stride_vd,
                 stride_dob, stride_doh, stride_dot, stride_dod,
                 stride_dqb, stride_dqh, stride_dqt, stride_dqd, H, T, T_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_DOCS: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """The deterministic dQ: one pass over query blocks, each program writing its rows once, the
    query-block order of _attn_fwd (longest job first)."""
    bh, b, h, m0 = _query_block(H, CAUSAL, DROPOUT, BLOCK_M, BLOCK_N)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = offs_m[:, None].to(tl.int64)
    q = _load(Q + b * stride_qb + h * stride_qh + rows * stride_qt + offs_d[None, :] * stride_qd,
              row_ok[:, None])  # (BLOCK_M, D)
    do = _load(DO + b * stride_dob + h * stride_doh + rows * stride_dot
               + offs_d[None, :] * stride_dod, row_ok[:, None])  # (BLOCK_M, D)
    lse = tl.load(LSE + bh * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=row_ok, other=0.0)
    ds_m, de_m = _doc_bounds(DS + b * T, DE + b * T, offs_m, T, HAS_DOCS)
    seed, bh, drop_t = _dropout_state(SEED, bh, drop_t, DROPOUT)
    dropout = (seed, bh, drop_t, 1.0 / drop_scale)  # with keep_prob = 1 - p
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    Kh = (K + b * stride_kb + h * stride_kh, stride_kt, stride_kd)  # this head's keys
    Vh = (V + b * stride_vb + h * stride_vh, stride_vt, stride_vd)
    stages = _query_stages(DS + b * T, DE + b * T, m0, T, CAUSAL, HAS_DOCS, BLOCK_M, BLOCK_N)
    for s in tl.static_range(3):  # the stages of _attn_fwd
        if HAS_DOCS or s > 0:
            dq = _dq_inner(dq, q, do, lse, delta, Kh, Vh, (m0, ds_m, de_m), start=stages[s],
                           end=stages[s + 1], T=T, qk_scale=sm_scale * LOG2E,
                           dropout=dropout, MASKED=s != 1, CAUSAL=CAUSAL, HAS_DOCS=HAS_DOCS,
                           DROPOUT=DROPOUT, BLOCK_N=BLOCK_N)

    dq = dq * (sm_scale * drop_scale)  # drop_scale 1 without dropout
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows * stride_dqt
             + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ------------------------------------------------------------------------------------------------
# Autotuning configs

def _configs(small, large):
    """Configs for one kernel: `small` (one fixed config) in the interpreter, the `large`
    candidates on a GPU.

    Each entry is (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M counts queries, BLOCK_N keys.
    The interpreter costs ~35 ms per program instance, so its blocks are small enough to exercise
    multi-block loops on short test sequences but few enough to stay fast. The static_asserts in
    the kernels check the block-size rules. The first entry is the one deterministic=True pins.
    """
    entries = [small] if INTERPRET else large
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in entries]


# The H100 candidates and their sm_90 register, spill and instruction counts are in
# docs/attention_kernel_tuning.md. Few candidates each: every one is compiled and timed once per new
# tuning key (seconds each at the first step). First in each list: the pinned config of
# deterministic=True (forward and dQ: no spills; backward: 16-24 B outside the loops at D 64 with
# dropout, more at D 128, as every backward tile that keeps its instruction count).
FWD_CONFIGS = _configs((32, 32, 4, 1),
                       [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)])
BWD_CONFIGS = _configs((16, 32, 4, 1),
                       [(64, 64, 8, 3), (64, 64, 4, 3), (32, 128, 8, 3), (64, 128, 8, 2)])
DQ_CONFIGS = _configs((32, 32, 4, 1), [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 4)])
# Retune only when something that changes the best config changes; T by power-of-two bucket.
TUNE_KEY = ["HEAD_DIM", "T_BUCKET", "CAUSAL", "HAS_DOCS", "DROPOUT"]

attn_fwd = triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY)(_attn_fwd)
# timing a config adds into dQ, so the autotuner zeroes it before each trial and the real launch
attn_bwd = triton.autotune(configs=BWD_CONFIGS, key=TUNE_KEY + ["FUSE_DQ"],
                           reset_to_zero=["DQ"])(_attn_bwd)
attn_bwd_dq = triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY)(_attn_bwd_dq)


def _launch(kernel, grid, deterministic, *args, **meta):
    """Run an autotuned kernel; deterministic: its pinned config (the first candidate) for every
    shape, without timing: the same blocks, so the same sums, in every process and run.
    grid(config kwargs) -> the launch grid."""
    if not deterministic:
        return kernel[grid](*args, **meta)
    cfg = kernel.configs[0]
    kernel.fn[grid(cfg.kwargs)](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                                num_stages=cfg.num_stages)


# ------------------------------------------------------------------------------------------------
# Python side: checks, launches, custom ops, autograd

def flash_attention_supported(q, k, v, doc_ids=None):
    """True when flash_attention() can run these inputs; otherwise a caller should use PyTorch SDPA.

    Needs q, k, v of one shape (B, H, T, D) with T >= 1 and D in HEAD_DIMS, one dtype and one
    device, and either a CUDA device with fp16/bf16, or the CPU under TRITON_INTERPRET=1
    (fp32/fp16/bf16, for tests). doc_ids, if given, must be (B, T) integers on the same device.
    Offsets within one head, of q, k, v and of the gradients (laid out (B, T, H, D)), must fit in
    int32, as the backward's loop over query blocks takes them: with model.py's fused qkv,
    3 * T * H * D < 2^31 (T up to 349,525 at phi-1's width, 2048).
    """
    if not (q.dim() == 4 and q.shape == k.shape == v.shape and q.shape[2] >= 1
            and q.shape[3] in HEAD_DIMS):
        return False
    B, H, T, D = q.shape
    if not (all(_head_offsets_fit(x) for x in (q, k, v)) and T * H * D < 2**31):
        return False
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        return False
    if doc_ids is not None and (doc_ids.shape != (B, T) or doc_ids.dtype.is_floating_point
                                or doc_ids.device != q.device):
        return False
    if q.device.type == "cuda":
        return not INTERPRET and q.dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float16,
                                                                torch.bfloat16)


def _head_offsets_fit(x):
    """True when every offset within one (T, D) head of x (B, H, T, D) fits in int32."""
    T, D = x.shape[2:]
    return (T - 1) * x.stride(2) + (D - 1) * x.stride(3) < 2**31


def document_bounds(doc_ids):
    """(B, T) doc ids -> (starts, ends), int32 (B, T): the first position of each token's document
    and the first position after it. A document is a maximal run of equal ids, as in a packed
    sequence (doc_ids = cumsum of EOT)."""
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
    """(8-bit threshold t, scale): an entry is dropped when its random byte is < t = round(256 p),
    so the dropout probability is exactly t / 256 and kept entries are scaled by 256 / (256 - t)."""
    t = min(round(dropout_p * 256), 255)
    return t, 256 / (256 - t)


def draw_seed(device):
    """The dropout seed flash_attention draws: a 62-bit int64 on the device, from torch's
    generator for it, so reproducible under torch.manual_seed and fresh at every replay of a CUDA
    graph."""
    return torch.randint(2**62, (), dtype=torch.int64, device=device)


def dropout_mask(seed, B, H, T, dropout_p, device="cpu"):
    """The keep-mask (B, H, T, T) bool that the kernels apply for this seed (an int, or the int64
    tensor of draw_seed): for tests and references."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    mask = torch.empty(B, H, T, T, dtype=torch.int8, device=device)
    block_m, block_n = (32, 64) if INTERPRET else (64, 128)
    _dropout_mask_kernel[(B * H, triton.cdiv(T, block_m))](
        mask, seed, dropout_threshold(dropout_p)[0], T, BLOCK_M=block_m, BLOCK_N=block_n)
    return mask.bool()


def _strides(*tensors):
    """The (B, H, T, D) strides of each tensor in turn, as the kernels take them."""
    return tuple(stride for x in tensors for stride in x.stride())


def _common_args(q, causal, doc_bounds, dropout_p, seed):
    """(B, H, T, (doc starts, doc ends, seed, drop_t, drop_scale), constexprs) of every launch."""
    B, H, T, D = q.shape
    has_docs = doc_bounds is not None
    ds, de = doc_bounds if has_docs else (q, q)  # never read without documents
    drop_t, drop_scale = dropout_threshold(dropout_p)
    meta = dict(HEAD_DIM=D, CAUSAL=bool(causal), HAS_DOCS=has_docs, DROPOUT=drop_t > 0)
    return B, H, T, (ds, de, q if seed is None else seed, drop_t, drop_scale), meta


def _forward(q, k, v, o, lse, causal, sm_scale, doc_bounds=None, dropout_p=0.0, seed=None,
             deterministic=False):
    """Fill o (B, H, T, D) and lse (B, H, T) fp32 (base-2 log-sum-exp of the scaled scores) in
    place; any strides for q, k, v, o; lse contiguous; seed an int64 tensor of one element (on q's
    device) when dropout_p > 0. deterministic: the pinned config (_launch)."""
    B, H, T, extra, meta = _common_args(q, causal, doc_bounds, dropout_p, seed)
    grid = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_M"]))
    _launch(attn_fwd, grid, deterministic, q, k, v, o, lse, *extra, float(sm_scale),
            *_strides(q, k, v, o), H, T, triton.next_power_of_2(T), **meta)


def _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, doc_bounds=None,
              dropout_p=0.0, seed=None, deterministic=False):
    """Fill dq, dk, dv (B, H, T, D) and delta (B, H, T) fp32 (contiguous) in place, from the
    forward's o and lse. deterministic: dQ from a second pass over query blocks instead of fp32
    atomics, every kernel in its pinned config (bitwise reproducible)."""
    B, H, T, extra, meta = _common_args(q, causal, doc_bounds, dropout_p, seed)
    if not _head_offsets_fit(do):  # autograd's dO may come with any strides
        do = do.contiguous()
    _bwd_delta[(B * H, triton.cdiv(T, 64))](o, do, delta, *_strides(o, do), H, T,
                                            HEAD_DIM=meta["HEAD_DIM"], BLOCK_M=64)
    # fp32 dQ for the atomics, laid out like dq; the deterministic pass writes dq directly
    dq_acc = dq if deterministic else _empty_bhtd(dq, torch.float32).zero_()
    args = (*extra, float(sm_scale), *_strides(q, k, v, do))
    sizes = (H, T, triton.next_power_of_2(T))
    grid_n = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_N"]))
    _launch(attn_bwd, grid_n, deterministic, q, k, v, do, dq_acc, dk, dv, lse, delta, *args,
            *_strides(dq_acc, dk, dv), *sizes, FUSE_DQ=not deterministic, **meta)
    if deterministic:
        grid_m = lambda cfg: (B * H, triton.cdiv(T, cfg["BLOCK_M"]))
        _launch(attn_bwd_dq, grid_m, True, q, k, v, do, dq, lse, delta, *args, *_strides(dq),
                *sizes, **meta)
    else:
        dq.copy_(dq_acc)


def _empty_bhtd(x, dtype=None):
    """An uninitialised (B, H, T, D) tensor laid out as (B, T, H, D) in memory: model.py's
    transpose(1, 2) back to (B, T, C) is then free."""
    B, H, T, D = x.shape
    return torch.empty(B, T, H, D, dtype=dtype or x.dtype, device=x.device).transpose(1, 2)


def flash_attention(q, k, v, causal=True, sm_scale=None, doc_ids=None, dropout_p=0.0,
                    deterministic=None):
    """softmax(sm_scale * q k^T, masked) v with dropout on the attention weights; q, k, v and the
    result (B, H, T, D).

    causal: each query sees keys at or before its position. sm_scale: defaults to 1/sqrt(D).
    doc_ids: (B, T) integers; a query sees only keys of its own document (a maximal run of equal
    ids). dropout_p: attention dropout probability (pass 0 in eval mode), rounded to a multiple of
    1/256; the mask is regenerated in the backward pass. deterministic: bitwise reproducible
    results (pinned configs, dQ without atomics: ~2 more matmuls per score); None follows
    torch.use_deterministic_algorithms, as PyTorch's own attention does.
    Check flash_attention_supported() first; unsupported inputs raise ValueError.
    """
    if not flash_attention_supported(q, k, v, doc_ids):
        docs = None if doc_ids is None else tuple(doc_ids.shape)
        raise ValueError(f"flash_attention: unsupported inputs q{tuple(q.shape)} {q.dtype} on "
                         f"{q.device}, k{tuple(k.shape)}, v{tuple(v.shape)}, doc_ids {docs} "
                         f"(see flash_attention_supported)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flash_attention: dropout_p must be in [0, 1), got {dropout_p}")
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    starts, ends = document_bounds(doc_ids) if doc_ids is not None else (None, None)
    o, _, _ = _fwd_op(q, k, v, starts, ends, bool(causal), sm_scale, float(dropout_p),
                      bool(deterministic))
    return o


# ------------------------------------------------------------------------------------------------
# Custom ops: to torch.compile each is one opaque node with a shape function (register_fake), so
# Dynamo traces the model as one graph and AOTAutograd puts the backward op in the backward graph.
# The kernels, their autotuning and the seed draw happen when the op runs, compiled and eager.

@torch.library.custom_op("phi1::flash_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_starts: Optional[torch.Tensor],
            doc_ends: Optional[torch.Tensor], causal: bool, sm_scale: float, dropout_p: float,
            deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    if dropout_threshold(dropout_p)[0]:
        seed = draw_seed(q.device)
    else:
        seed = q.new_zeros((), dtype=torch.int64)
    o = _empty_bhtd(q)  # (B, H, T, D)
    lse = torch.empty(B, H, T, dtype=torch.float32, device=q.device)
    bounds = (doc_starts, doc_ends) if doc_starts is not None else None
    _forward(q, k, v, o, lse, causal, sm_scale, bounds, dropout_p, seed, deterministic)
    return o, lse, seed


@_fwd_op.register_fake
def _(q, k, v, doc_starts, doc_ends, causal, sm_scale, dropout_p, deterministic):
    B, H, T, D = q.shape
    return (_empty_bhtd(q), q.new_empty(B, H, T, dtype=torch.float32),
            q.new_empty((), dtype=torch.int64))


@torch.library.custom_op("phi1::flash_attention_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, seed: torch.Tensor, doc_starts: Optional[torch.Tensor],
            doc_ends: Optional[torch.Tensor], causal: bool, sm_scale: float, dropout_p: float,
            deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _empty_bhtd(q), _empty_bhtd(k), _empty_bhtd(v)
    delta = torch.empty_like(lse)
    bounds = (doc_starts, doc_ends) if doc_starts is not None else None
    _backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, bounds, dropout_p, seed,
              deterministic)
    return dq, dk, dv


@_bwd_op.register_fake
def _(do, q, k, v, o, lse, seed, doc_starts, doc_ends, causal, sm_scale, dropout_p, deterministic):
    return _empty_bhtd(q), _empty_bhtd(k), _empty_bhtd(v)


def _setup_context(ctx, inputs, output):
    q, k, v, doc_starts, doc_ends, *ctx.args = inputs  # causal, sm_scale, dropout_p, deterministic
    o, lse, seed = output
    ctx.save_for_backward(q, k, v, o, lse, seed, doc_starts, doc_ends)


def _backward_op(ctx, do, _dlse, _dseed):
    q, k, v, o, lse, seed, doc_starts, doc_ends = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do, q, k, v, o, lse, seed, doc_starts, doc_ends, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_fwd_op.register_autograd(_backward_op, setup_context=_setup_context)
