"""Tests for attention_kernel.py.

CPU tests run the Triton kernels in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1) against a float64
reference; outputs are pre-filled with NaN so that any element a kernel forgets to write fails. GPU tests (real
kernels against PyTorch SDPA) run only with CUDA and the interpreter off:
    TRITON_INTERPRET=0 python -m pytest -q tests/test_attention_kernel.py
"""
import math
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton

import attention_kernel as ak
import model
from configurator import RunError, UserError

interpreter_only = pytest.mark.skipif(not ak.INTERPRET, reason="CPU tests need TRITON_INTERPRET=1")
gpu_only = pytest.mark.skipif(ak.INTERPRET or not torch.cuda.is_available(),
                              reason="needs CUDA and TRITON_INTERPRET unset/0")
# torch.compile on a CPU builds C++ with a command line that torch splits at spaces (paths are not
# quoted): it cannot link when torch, Python or the compiler's cache lives under a path with a space
cpu_compiler_links = pytest.mark.skipif(
    any(" " in p for p in (os.path.dirname(torch.__file__), sysconfig.get_path("include"),
                           os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir())),
    reason="torch's CPU compiler cannot link when torch, Python or its cache lives under a path with a "
           "space")


# ----------------------------------------------------------------------------------------------------------------
# helpers

def reference(q, k, v, causal, sm_scale=None, doc_ids=None, keep=None, dropout_p=0.0, dtype=torch.float64):
    """Plain attention in `dtype` with the same masks; returns (out, lse) with lse the base-2 log-sum-exp."""
    q, k, v = (x.to(dtype) for x in (q, k, v))
    B, H, T, D = q.shape
    sm_scale = 1 / math.sqrt(D) if sm_scale is None else sm_scale
    s = q @ k.transpose(-1, -2) * sm_scale  # (B, H, T, T)
    visible = torch.ones(T, T, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()
    visible = visible.expand(B, 1, T, T)
    if doc_ids is not None:
        visible = visible & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1) / math.log(2)  # (B, H, T)
    p = s.softmax(dim=-1)
    if keep is not None:  # the kernels drop with probability round(256 p) / 256 exactly
        p = p * keep / (1 - ak.dropout_threshold(dropout_p)[0] / 256)
    return p @ v, lse


def make_qkv(B, H, T, D, dtype, layout, device="cpu", requires_grad=False, seed=0):
    """q, k, v (B, H, T, D) in one of three memory layouts: 'contiguous'; 'fused', views of one (B, T, 3, H, D)
    projection as in model.py; 'd_strided', head dim not innermost."""
    g = torch.Generator(device=device).manual_seed(seed)
    if layout == "contiguous":
        qkv = [torch.randn(B, H, T, D, generator=g, device=device).to(dtype) for _ in range(3)]
    elif layout == "fused":
        fused = torch.randn(B, T, 3, H, D, generator=g, device=device).to(dtype)
        qkv = list(fused.permute(2, 0, 3, 1, 4).unbind(0))
    elif layout == "d_strided":
        qkv = [torch.randn(B, H, D, T, generator=g, device=device).to(dtype).transpose(2, 3) for _ in range(3)]
    if requires_grad:
        qkv = [x.detach().requires_grad_() for x in qkv]
    return qkv


def make_doc_ids(B, T, seed=0, device="cpu"):
    """(B, T) ids of contiguous documents of random lengths 1..40, distinct ids per document."""
    g = torch.Generator().manual_seed(seed)
    starts = (torch.rand(B, T, generator=g) < 1 / 20) | (torch.rand(B, T, generator=g) < 0.02)
    starts[:, 0] = True
    return starts.long().cumsum(1).to(device) * 3 + 7  # ids need not start at 0 or be consecutive


def nan_like_bhtd(x, dtype=None):
    """NaN-filled (B, H, T, D) in (B, T, H, D) memory, like the buffers flash_attention allocates."""
    B, H, T, D = x.shape
    return torch.full((B, T, H, D), float("nan"), dtype=dtype or x.dtype, device=x.device).transpose(1, 2)


def run_kernels(q, k, v, do, causal, doc_ids=None, dropout_p=0.0, seed=0, sm_scale=None, deterministic=False):
    """Forward and backward through the internal entries, into NaN-filled buffers; returns (o, lse, dq, dk, dv)."""
    B, H, T, D = q.shape
    sm_scale = 1 / math.sqrt(D) if sm_scale is None else sm_scale
    bounds = ak.document_bounds(doc_ids) if doc_ids is not None else None
    seed = torch.tensor(seed, dtype=torch.int64)
    o = nan_like_bhtd(q)
    lse = torch.full((B, H, T), float("nan"))
    ak._forward(q, k, v, o, lse, causal, sm_scale, bounds, dropout_p, seed, deterministic)
    dq, dk, dv = nan_like_bhtd(q), nan_like_bhtd(k), nan_like_bhtd(v)
    delta = torch.full((B, H, T), float("nan"))
    ak._backward(q, k, v, o, lse, do, dq, dk, dv, delta, causal, sm_scale, bounds, dropout_p, seed, deterministic)
    return o, lse, dq, dk, dv


def reference_with_grads(q, k, v, do, causal, **kw):
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    out, lse = reference(q, k, v, causal, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do.double())
    return out.detach(), lse, dq, dk, dv


TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def assert_all_close(got, want, dtype, names=("o", "lse", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a.double(), b, **TOL[dtype], msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# the algorithm in PyTorch (no Triton)

@pytest.mark.parametrize("T,mask_kind",
                         [(48, "causal"), (37, "causal"), (45, "docs"), (30, "full")])
def test_the_algorithm_in_pytorch_matches_attention_reference(T, mask_kind):
    """flash_attention_tiles and its backward, the algorithm the kernels mirror, against
    model.attention_reference and autograd: causal, document-masked, no mask; T a multiple of the
    tiles (48) or not (the tail blocks of 37, 45, 30)."""
    B, H, D = 2, 2, 16
    q, k, v = make_qkv(B, H, T, D, torch.float32, "fused", requires_grad=True)
    if mask_kind == "docs":
        mask = model.document_mask(make_doc_ids(B, T, seed=T))  # (B, 1, T, T)
    else:
        mask = torch.ones(1, 1, T, T, dtype=torch.bool)
        mask = mask.tril() if mask_kind == "causal" else mask
    want = model.attention_reference(q, k, v, mask)
    do = torch.randn(B, H, T, D)
    want_grads = torch.autograd.grad(want, (q, k, v), do)
    q, k, v = q.detach(), k.detach(), v.detach()
    o, lse = ak.flash_attention_tiles(q, k, v, mask, BLOCK_M=16, BLOCK_N=8)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, float("-inf"))
    grads = ak.flash_attention_tiles_backward(q, k, v, mask, o, lse, do, BLOCK_M=8, BLOCK_N=16)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o, want.detach(), **tol)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1) / math.log(2), **tol)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, want_grads):
        torch.testing.assert_close(got, ref, **tol, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# CPU (interpreter): correctness against float64

# (B, H, T, D, causal, dtype, layout, documents): every T of {1, 17, 64, 100, 130}, D of {32, 64} (16 and 128 once),
# both causalities, fp32/fp16 (bf16 once), each layout, documents, spread over few cases rather than the full cross
# product; every other case takes the deterministic backward (dQ pass) instead of the fused one (dQ atomics).
CASES = [
    (1, 2, 1, 32, True, torch.float32, "contiguous", False),
    (2, 1, 1, 64, False, torch.float16, "fused", False),
    (1, 2, 17, 32, True, torch.float16, "contiguous", False),
    (2, 1, 17, 64, False, torch.float32, "fused", True),
    (1, 2, 64, 32, True, torch.float32, "fused", False),
    (2, 1, 64, 64, False, torch.float16, "contiguous", False),
    (2, 2, 64, 32, True, torch.float32, "contiguous", True),
    (1, 1, 100, 64, True, torch.float32, "d_strided", False),
    (2, 1, 100, 32, False, torch.float32, "contiguous", False),
    (1, 2, 100, 32, True, torch.float16, "fused", True),
    (2, 1, 100, 64, True, torch.float16, "contiguous", True),
    (1, 2, 130, 32, True, torch.float32, "contiguous", False),
    (2, 1, 130, 64, False, torch.float16, "fused", True),
    (1, 1, 130, 32, False, torch.float32, "d_strided", True),
    (1, 2, 130, 64, True, torch.bfloat16, "fused", False),
    (1, 1, 40, 16, True, torch.float32, "fused", True),
    (1, 1, 50, 128, False, torch.float16, "contiguous", False),
]


@interpreter_only
@pytest.mark.parametrize("B,H,T,D,causal,dtype,layout,docs,deterministic", [c + (i % 2 == 1,) for i, c in
                                                                            enumerate(CASES)],
                         ids=[f"B{c[0]}H{c[1]}T{c[2]}D{c[3]}-{'causal' if c[4] else 'full'}-{str(c[5])[6:]}-{c[6]}"
                              f"{'-docs' if c[7] else ''}{'-det' if i % 2 else ''}" for i, c in enumerate(CASES)])
def test_forward_backward_match_float64(B, H, T, D, causal, dtype, layout, docs, deterministic):
    q, k, v = make_qkv(B, H, T, D, dtype, layout)
    do = torch.randn(B, T, H, D).to(dtype).transpose(1, 2)  # non-contiguous, as model.py's backward gives it
    doc_ids = make_doc_ids(B, T, seed=T) if docs else None
    got = run_kernels(q, k, v, do, causal, doc_ids, deterministic=deterministic)
    assert_all_close(got, reference_with_grads(q, k, v, do, causal, doc_ids=doc_ids), dtype)


@interpreter_only
def test_custom_scale_and_single_document_equals_no_documents():
    q, k, v = make_qkv(1, 2, 40, 32, torch.float32, "contiguous")
    do = torch.randn(1, 2, 40, 32)
    got = run_kernels(q, k, v, do, False, torch.full((1, 40), 4), sm_scale=0.3)
    assert_all_close(got, reference_with_grads(q, k, v, do, False, sm_scale=0.3), torch.float32)


@interpreter_only
@pytest.mark.parametrize("fwd,bwd,dq", [((16, 16), (16, 16), (16, 16)), ((64, 32), (16, 64), (64, 16))])
def test_other_block_shapes(monkeypatch, fwd, bwd, dq):
    """The stage boundaries for block shapes the GPU autotuner may pick (square blocks, wider ratios); both
    backward paths."""
    for kernel, (m, n) in ((ak.attn_fwd, fwd), (ak.attn_bwd, bwd), (ak.attn_bwd_dq, dq)):
        monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4)])
    q, k, v = make_qkv(1, 1, 100, 32, torch.float32, "fused")
    do = torch.randn(1, 1, 100, 32)
    doc_ids = make_doc_ids(1, 100, seed=5)
    for causal, docs, det in ((True, None, False), (False, None, True), (True, doc_ids, True), (False, doc_ids, False)):
        got = run_kernels(q, k, v, do, causal, docs, deterministic=det)
        assert_all_close(got, reference_with_grads(q, k, v, do, causal, doc_ids=docs), torch.float32)


@interpreter_only
def test_block_size_rules_are_checked_when_compiling(monkeypatch):
    """A config that breaks a block-size rule fails at compile time instead of masking the causal diagonal wrong."""
    q, k, v = make_qkv(1, 1, 40, 32, torch.float32, "contiguous")
    do = torch.randn(1, 1, 40, 32)
    monkeypatch.setattr(ak.attn_fwd, "configs", [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4)])
    with pytest.raises(Exception, match="BLOCK_M must be a multiple of BLOCK_N"):
        run_kernels(q, k, v, do, True)
    monkeypatch.setattr(ak.attn_fwd, "configs", [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4)])
    with pytest.raises(Exception, match="dropout: 16 x 32 tiles"):
        run_kernels(q, k, v, do, True, dropout_p=0.1)


@interpreter_only
@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the poisoned document's own rows
@pytest.mark.parametrize("causal", [True, False])
def test_document_blocks_outside_are_never_read(causal):
    """Documents aligned to 32 positions, the middle one poisoned with NaN: if any kernel visited one of its key or
    query blocks for the other documents, NaN would leak into them (0 * NaN = NaN even under a mask)."""
    for cfgs in (ak.FWD_CONFIGS, ak.BWD_CONFIGS, ak.DQ_CONFIGS):
        assert 32 % cfgs[0].kwargs["BLOCK_M"] == 0 and 32 % cfgs[0].kwargs["BLOCK_N"] == 0
    T = 96
    doc_ids = torch.arange(T).div(32, rounding_mode="floor")[None]  # (1, T): [0]*32 + [1]*32 + [2]*32
    q, k, v = make_qkv(1, 1, T, 32, torch.float32, "contiguous")
    do = torch.randn(1, 1, T, 32)
    want = reference_with_grads(q, k, v, do, causal, doc_ids=doc_ids)
    for x in (q, k, v, do):
        x[:, :, 32:64] = float("nan")
    got = run_kernels(q, k, v, do, causal, doc_ids)
    outside = torch.cat([torch.arange(32), torch.arange(64, 96)])
    assert_all_close([x[:, :, outside] for x in got], [x[:, :, outside] for x in want], torch.float32)


@interpreter_only
@pytest.mark.parametrize("do_fits", [True, False])
def test_autograd_through_fused_qkv_and_stride0_grad(monkeypatch, do_fits):
    """The public function on views of one (B, T, 3, H, D) tensor; o.sum() hands the backward a stride-0 dO.
    do_fits=False: the backward takes dO as if its offsets did not fit in int32 (a contiguous copy)."""
    if not do_fits:
        monkeypatch.setattr(ak, "_head_offsets_fit", lambda x: x.stride(2) > 0)
    B, H, T, D = 2, 2, 33, 32
    fused = torch.randn(B, T, 3, H, D, requires_grad=True)
    q, k, v = fused.permute(2, 0, 3, 1, 4).unbind(0)
    doc_ids = make_doc_ids(B, T, seed=1)
    o = ak.flash_attention(q, k, v, causal=True, doc_ids=doc_ids)
    assert o.shape == (B, H, T, D) and o.transpose(1, 2).is_contiguous()
    o.sum().backward()
    ref_fused = fused.detach().double().requires_grad_()
    rq, rk, rv = ref_fused.permute(2, 0, 3, 1, 4).unbind(0)
    ref_o, _ = reference(rq, rk, rv, True, doc_ids=doc_ids)
    ref_o.sum().backward()
    torch.testing.assert_close(o.double(), ref_o.detach(), **TOL[torch.float32])
    torch.testing.assert_close(fused.grad.double(), ref_fused.grad, **TOL[torch.float32])


@interpreter_only
@pytest.mark.parametrize("deterministic", [False, True])
def test_dropout_matches_float64_with_the_same_mask(deterministic):
    B, H, T, D, p, seed = 2, 1, 70, 32, 0.3, 2**40 + 12345  # a seed above 32 bits: both key words matter
    q, k, v = make_qkv(B, H, T, D, torch.float32, "fused")
    do = torch.randn(B, H, T, D)
    doc_ids = make_doc_ids(B, T, seed=2)
    keep = ak.dropout_mask(seed, B, H, T, p)  # (B, H, T, T) bool
    assert not torch.equal(keep[0], keep[1])  # each (batch, head) draws its own numbers
    assert not torch.equal(keep, ak.dropout_mask(seed + 2**32, B, H, T, p))
    got = run_kernels(q, k, v, do, True, doc_ids, dropout_p=p, seed=seed, deterministic=deterministic)
    want = reference_with_grads(q, k, v, do, True, doc_ids=doc_ids, keep=keep, dropout_p=p)
    assert_all_close(got, want, torch.float32)


@interpreter_only
def test_dropout_bits_are_uniform_and_p_is_rounded_to_a_256th():
    assert ak.dropout_threshold(0.1) == (26, 256 / 230) and ak.dropout_threshold(0.0)[0] == 0
    B, H, T = 1, 2, 192
    keep = ak.dropout_mask(7, B, H, T, 0.5)  # (B, H, T, T): 73728 draws
    assert abs(keep.float().mean().item() - 0.5) < 0.01
    # each of the 16 entries one Philox call serves (query bit 3, key bits 0, 3, 4) keeps half of the time
    parts = keep.reshape(B, H, T // 16, 2, 8, T // 32, 2, 2, 4, 2).float()
    assert torch.allclose(parts.mean(dim=(0, 1, 2, 4, 5, 8)), torch.tensor(0.5), atol=0.03)  # 4 sigma
    for p in (0.1, 0.9):
        assert abs(ak.dropout_mask(3, B, H, T, p).float().mean().item() - (1 - round(256 * p) / 256)) < 0.01


def philox_4x32_10(seed, c0, c1, c2, c3):
    """Philox-4x32-10 (Salmon et al. 2011) on numpy uint64 arrays holding 32-bit counters, key =
    the 64-bit seed: the generator the kernels' dropout is defined by, written independently."""
    low = np.uint64(0xFFFFFFFF)
    k0, k1 = np.uint64(seed) & low, np.uint64(seed) >> np.uint64(32)
    for _ in range(10):
        a_c0, b_c2 = c0 * np.uint64(0xD2511F53), c2 * np.uint64(0xCD9E8D57)  # exact: < 2^64
        c0, c2 = (b_c2 >> np.uint64(32)) ^ c1 ^ k0, (a_c0 >> np.uint64(32)) ^ c3 ^ k1
        c1, c3 = b_c2 & low, a_c0 & low
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & low, (k1 + np.uint64(0xBB67AE85)) & low
    return c0, c1, c2, c3


@interpreter_only
def test_dropout_mask_is_the_documented_philox_draw():
    """The keep-mask, entry by entry, as the docs define it: entry (query i, key j) of head bh
    takes byte 2 (i // 8 % 2) + j % 2 of word j // 8 % 4 of Philox-4x32-10 with counter
    ((j // 32) 4 + j % 8 // 2, (i // 16) 8 + i % 8, bh, 0) under the seed, and is kept when that
    byte is >= round(256 p). Any change to how the kernels draw the mask fails here."""
    B, H, T, p = 2, 2, 70, 0.3
    i, j = np.indices((T, T), dtype=np.uint64)  # (T, T) each: query and key positions
    for seed in (7, 2**40 + 12345):
        want = torch.empty(B, H, T, T, dtype=torch.bool)
        for bh in range(B * H):
            words = philox_4x32_10(seed, (j // 32) * 4 + j % 8 // 2, (i // 16) * 8 + i % 8,
                                   np.full((T, T), bh, dtype=np.uint64), 0 * i)
            word = np.choose((j // 8 % 4).astype(np.int64), words)
            byte = (word >> (np.uint64(8) * (2 * (i // 8 % 2) + j % 2))) & np.uint64(0xFF)
            want[bh // H, bh % H] = torch.from_numpy(byte >= round(256 * p))
        assert torch.equal(ak.dropout_mask(seed, B, H, T, p), want)


@interpreter_only
def test_dropout_seed_follows_torch_manual_seed():
    q, k, v = make_qkv(1, 2, 20, 32, torch.float32, "contiguous")
    torch.manual_seed(3)
    a = ak.flash_attention(q, k, v, dropout_p=0.5)
    b = ak.flash_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(3)
    c = ak.flash_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, c) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="dropout_p"):
        ak.flash_attention(q, k, v, dropout_p=1.0)


@interpreter_only
def test_deterministic():
    q, k, v = make_qkv(2, 2, 50, 32, torch.float16, "fused")
    do = torch.randn(2, 2, 50, 32).half()
    doc_ids = make_doc_ids(2, 50, seed=3)
    first = run_kernels(q, k, v, do, True, doc_ids, dropout_p=0.1, seed=7, deterministic=True)
    second = run_kernels(q, k, v, do, True, doc_ids, dropout_p=0.1, seed=7, deterministic=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


class LaunchSpy:
    """Stands in for an autotuned kernel's JITFunction (kernel.fn): records each launch's config."""

    def __init__(self, fn):
        self.fn, self.configs = fn, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.configs.append((kw["BLOCK_M"], kw["BLOCK_N"], kw["num_warps"], kw["num_stages"]))
            return self.fn[grid](*args, **kw)
        return launch


@interpreter_only
def test_deterministic_pins_one_config_per_kernel_without_timing(monkeypatch):
    """deterministic=True launches each kernel in its first candidate config for every shape; the
    autotuner, which would time the candidates in this process, is never asked."""
    first = {ak.attn_fwd: (32, 16), ak.attn_bwd: (16, 32), ak.attn_bwd_dq: (32, 16)}
    spies = {}
    for kernel, (m, n) in first.items():
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=2),
                   triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8)]
        monkeypatch.setattr(kernel, "configs", configs)
        monkeypatch.setattr(kernel, "run", lambda *a, **k: pytest.fail("autotuned when pinned"))
        spies[kernel] = LaunchSpy(kernel.fn)
        monkeypatch.setattr(kernel, "fn", spies[kernel])
    for T, docs in ((45, None), (70, make_doc_ids(1, 70, seed=1))):
        q, k, v = make_qkv(1, 2, T, 32, torch.float32, "fused")
        do = torch.randn(1, 2, T, 32)
        got = run_kernels(q, k, v, do, True, docs, deterministic=True)
        assert_all_close(got, reference_with_grads(q, k, v, do, True, doc_ids=docs), torch.float32)
    for kernel, (m, n) in first.items():
        assert spies[kernel].configs == [(m, n, 4, 2)] * 2


# ----------------------------------------------------------------------------------------------------------------
# CPU (interpreter): torch.compile traces through the custom ops

def _attention_and_grads(fn, q, k, v, doc_ids, p, seed):
    torch.manual_seed(seed)
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    o = fn(q, k, v, doc_ids, p)
    return (o, *torch.autograd.grad((o * o).sum(), (q, k, v)))


@interpreter_only
@cpu_compiler_links
def test_compiled_equals_eager_without_graph_breaks():
    """fullgraph=True fails on any graph break; inductor compiles everything around the kernels (document bounds,
    the loss), the kernels run inside the custom ops, and dropout draws the same seed compiled and eager."""
    torch._dynamo.reset()
    fn = lambda q, k, v, doc_ids, p: ak.flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=p)
    compiled = torch.compile(fn, fullgraph=True)
    q, k, v = make_qkv(1, 2, 40, 32, torch.float32, "fused")
    doc_ids = make_doc_ids(1, 40, seed=4)
    eager = _attention_and_grads(fn, q, k, v, doc_ids, 0.2, seed=5)
    for a, b in zip(_attention_and_grads(compiled, q, k, v, doc_ids, 0.2, seed=5), eager):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.equal(_attention_and_grads(compiled, q, k, v, doc_ids, 0.2, seed=6)[0], eager[0])


@interpreter_only
def test_custom_ops_pass_opcheck():
    """torch.library's own checks: schema, fake (meta) functions against the real ones, autograd registration."""
    q, k, v = make_qkv(1, 2, 20, 16, torch.float32, "fused", requires_grad=True)
    starts, ends = ak.document_bounds(make_doc_ids(1, 20, seed=1))
    torch.library.opcheck(ak._fwd_op, (q, k, v, starts, ends, True, 0.25, 0.0, False),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@interpreter_only
def test_compiled_tiny_phi_trains_through_the_kernel(monkeypatch):
    """A compiled Phi whose attention is our kernel (with documents and dropout) learns a fixed batch, one graph
    for forward and backward; its first loss equals the eager SDPA model's."""
    torch.manual_seed(0)
    net = model.Phi(model.PhiConfig.from_preset("nano", n_layer=1, n_head=2, n_embd=32, n_inner=64, vocab_size=64,
                                                block_size=32))
    x = torch.randint(0, 64, (1, 32))
    doc_ids = torch.cat([torch.zeros(1, 12, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)], dim=1)
    _, sdpa_loss = net(x[:, :-1], x[:, 1:], doc_ids[:, :-1])
    calls = []

    def kernel_attention(q, k, v, dropout_p=0.0, doc_ids=None, mask=None, kind="auto"):
        calls.append(q.shape)
        return ak.flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=dropout_p)

    monkeypatch.setattr(model, "attention", kernel_attention)
    torch._dynamo.reset()
    # aot_eager: Dynamo and AOTAutograd trace as inductor's would, without minutes of C++ compiles on a CPU
    step = torch.compile(lambda: net(x[:, :-1], x[:, 1:], doc_ids[:, :-1])[1], fullgraph=True, backend="aot_eager")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for i in range(5):
        for layer in net.layers:
            layer.self_attn.attn_pdrop = 0.0 if i == 0 else 0.1
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert calls, "the compiled model never called the kernel"
    assert abs(losses[0] - sdpa_loss.item()) < 1e-5
    assert losses[-1] < losses[0] - 0.3, losses


def test_document_bounds():
    doc_ids = torch.tensor([[5, 5, 7, 7, 7, 5], [1, 1, 1, 1, 1, 1]])
    starts, ends = ak.document_bounds(doc_ids)
    assert starts.tolist() == [[0, 0, 2, 2, 2, 5], [0] * 6]  # the second run of 5s is a new document
    assert ends.tolist() == [[2, 2, 5, 5, 5, 6], [6] * 6]


def test_supported_and_clear_errors(monkeypatch):
    x = torch.zeros(1, 2, 8, 64)
    monkeypatch.setattr(ak, "INTERPRET", True)
    assert ak.flash_attention_supported(x, x, x)
    assert ak.flash_attention_supported(x, x, x, doc_ids=torch.zeros(1, 8, dtype=torch.int64))
    assert not ak.flash_attention_supported(x, x, x, doc_ids=torch.zeros(1, 9, dtype=torch.int64))
    for bad in (torch.zeros(1, 2, 8, 48), torch.zeros(1, 2, 8, 256), torch.zeros(1, 2, 0, 64), torch.zeros(2, 8, 64)):
        assert not ak.flash_attention_supported(bad, bad, bad)
    assert not ak.flash_attention_supported(x, x, x.double())
    assert not ak.flash_attention_supported(x.double(), x.double(), x.double())
    assert not ak.flash_attention_supported(x, x[:, :1], x)
    # offsets within a head must fit in int32: of q, k, v, and of the (B, T, H, D) gradients
    long = torch.zeros(1, 1, 1, 64).expand(1, 1, 2**25, 64)  # T * H * D = 2^31, no memory
    assert ak.flash_attention_supported(long[:, :, 1:], long[:, :, 1:], long[:, :, 1:])
    assert not ak.flash_attention_supported(long, long, long)
    head = lambda stride_t: torch.empty_strided((1, 1, 2, 64), (0, 0, stride_t, 1), device="meta")
    assert ak._head_offsets_fit(head(2**31 - 64)) and not ak._head_offsets_fit(head(2**31 - 63))
    with pytest.raises(ValueError, match="unsupported inputs"):
        ak.flash_attention(x, x[:, :1], x)
    monkeypatch.setattr(ak, "INTERPRET", False)  # plain CPU tensors need the interpreter
    assert not ak.flash_attention_supported(x, x, x)


def test_bench_attention_and_sass_arguments():
    """The kernel's benchmark and instruction counter live in bench.py: bad input is a UserError
    (one line, exit 2), no GPU a RunError."""
    import bench
    args = bench.attention_args([])
    assert args.shapes == bench.ATTENTION_SHAPES
    assert args.doc_len == 512 and args.dropout == [0.0, 0.1]
    args = bench.attention_args(["--shapes=1,2,64,32;2,2,128,64", "--flex=False"])
    assert args.shapes == [(1, 2, 64, 32), (2, 2, 128, 64)]
    for bad, message in (("--shapes=1,2,64", "--shapes must look like B,H,T,D"),
                         ("--dropout=0,1.5", "--dropout must be probabilities"),
                         ("--dtype=float32", "choose bfloat16 or float16"),
                         ("--flex", "expected --key=value, got '--flex'")):
        with pytest.raises(UserError, match=message):
            bench.attention_args([bad])
    doc_ids = bench.random_doc_ids(2, 300, 20, "cpu")
    assert doc_ids.shape == (2, 300) and (doc_ids.diff(dim=1) >= 0).all() and doc_ids[:, -1].min() > 3
    if ak.INTERPRET or not torch.cuda.is_available():
        with pytest.raises(RunError, match="needs a CUDA GPU"):
            bench.bench_attention(["--flex=False"])
    for bad in ("--kernels=forward,nope", "--head_dims=48", "--configs=some"):
        with pytest.raises(UserError):
            bench.bench_sass([bad])


def test_bench_sass_counts_sm90_instructions_without_a_gpu():
    """`python bench.py sass` compiles a kernel for sm_90 with Triton's ptxas (no GPU) and prints
    registers, spilled bytes and each loop's instructions, without and with dropout."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "bench.py", "sass", "--kernels=forward", "--head_dims=64",
                        "--configs=first"], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("forward"))
    (no_drop, drop), ratios = re.findall(r"(\d+) / (\d+) / \[([\d, ]+)\]", row), row.split("]")[-1]
    loops = [[int(n) for n in counts[2].split(",")] for counts in (no_drop, drop)]
    assert len(loops[0]) == len(loops[1]) >= 2 and all(b > a for a, b in zip(*loops))
    assert [float(x) for x in ratios.split()] == [round(b / a, 2) for a, b in zip(*loops)]


# ----------------------------------------------------------------------------------------------------------------
# GPU: real kernels against PyTorch SDPA

def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _check_against_sdpa(q, k, v, causal=True, doc_ids=None, keep=None, dropout_p=0.0, seed_state=0):
    """Our error against an fp32 reference must be within bf16/fp16 tolerance and not far above SDPA's own error."""
    torch.manual_seed(seed_state)
    o = ak.flash_attention(q, k, v, causal=causal, doc_ids=doc_ids, dropout_p=dropout_p)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref_o, _ = reference(*ref_in, causal, doc_ids=doc_ids, keep=keep, dropout_p=dropout_p, dtype=torch.float32)
    ref_grads = torch.autograd.grad(ref_o, ref_in, do.float())
    half_in = [x.detach().requires_grad_() for x in (q, k, v)]
    if doc_ids is None and keep is None:  # SDPA in the same half precision: the error budget to meet
        sdpa_o = F.scaled_dot_product_attention(*half_in, is_causal=causal)
        sdpa_grads = torch.autograd.grad(sdpa_o, half_in, do)
    for name, ours, ref, sdpa in zip(("o", "dq", "dk", "dv"), (o, *grads), (ref_o, *ref_grads),
                                     (sdpa_o, *sdpa_grads) if doc_ids is None and keep is None else [None] * 4):
        err = _rel_err(ours, ref)
        assert err < 2e-2, f"{name}: relative error {err:.2e}"
        if sdpa is not None:
            assert err < 3 * _rel_err(sdpa, ref) + 1e-3, f"{name}: ours {err:.2e} vs SDPA {_rel_err(sdpa, ref):.2e}"
    runs = []  # the deterministic backward: bitwise equal twice, and equal to the atomic one up to rounding
    for _ in range(2):
        torch.manual_seed(seed_state)
        o2 = ak.flash_attention(q, k, v, causal=causal, doc_ids=doc_ids, dropout_p=dropout_p, deterministic=True)
        runs.append((o2, *torch.autograd.grad(o2, (q, k, v), do)))
    assert all(torch.equal(a, b) for a, b in zip(*runs)), "deterministic=True is not bitwise reproducible"
    for name, det, ours in zip(("o", "dq", "dk", "dv"), runs[0], (o, *grads)):
        assert _rel_err(det, ours) < 1e-2, f"{name}: deterministic vs atomic backward {_rel_err(det, ours):.2e}"


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,H,T,D,causal,layout", [(2, 32, 2048, 64, True, "fused"), (1, 8, 1000, 128, False,
                                                   "contiguous"), (3, 4, 1, 32, True, "contiguous"),
                                                   (2, 4, 777, 64, True, "d_strided")])
def test_gpu_matches_sdpa(B, H, T, D, causal, layout, dtype):
    q, k, v = make_qkv(B, H, T, D, dtype, layout, device="cuda", requires_grad=True)
    _check_against_sdpa(q, k, v, causal)


@gpu_only
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_documents_and_dropout(causal):
    B, H, T, D, p = 2, 8, 1024, 64, 0.1
    q, k, v = make_qkv(B, H, T, D, torch.bfloat16, "fused", device="cuda", requires_grad=True)
    doc_ids = make_doc_ids(B, T, device="cuda")
    _check_against_sdpa(q, k, v, causal, doc_ids=doc_ids)
    torch.manual_seed(11)
    seed = ak.draw_seed("cuda")  # the draw flash_attention makes after torch.manual_seed(11)
    keep = ak.dropout_mask(seed, B, H, T, p, device="cuda")
    assert abs(keep.float().mean().item() - (1 - 26 / 256)) < 0.01
    _check_against_sdpa(q, k, v, causal, doc_ids=doc_ids, keep=keep, dropout_p=p, seed_state=11)


@gpu_only
def test_gpu_many_heads_and_compile():
    """B*H = 65536 programs per query block (beyond CUDA's 65535 on grid axes 1 and 2), and a compiled call with
    dropout equals the eager one under the same seed."""
    q, k, v = make_qkv(2, 32768, 32, 16, torch.bfloat16, "contiguous", device="cuda", requires_grad=True)
    o = ak.flash_attention(q, k, v)
    ref = F.scaled_dot_product_attention(*(x.float() for x in (q, k, v)), is_causal=True)
    assert _rel_err(o, ref) < 2e-2
    q, k, v = make_qkv(2, 8, 512, 64, torch.bfloat16, "fused", device="cuda")
    fn = lambda q, k, v, doc_ids, p: ak.flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=p)
    for a, b in zip(_attention_and_grads(torch.compile(fn, fullgraph=True), q, k, v, None, 0.1, seed=3),
                    _attention_and_grads(fn, q, k, v, None, 0.1, seed=3)):
        assert torch.equal(a, b) or _rel_err(a, b) < 1e-2  # dQ atomics: the order of additions may differ


@gpu_only
def test_gpu_64bit_offsets():
    """q, k, v views of a fused (B, T, 3, H, D) bf16 tensor of 2.4e9 elements: offsets past 2^31 in the last batch."""
    B, H, T, D = 96, 128, 1024, 64
    if torch.cuda.mem_get_info()[0] < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    fused = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    assert fused.numel() > 2**31
    q, k, v = (x.detach().requires_grad_() for x in fused.permute(2, 0, 3, 1, 4).unbind(0))  # views of one buffer
    o = ak.flash_attention(q, k, v)
    do = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    last = [x[-1:].detach().float().requires_grad_() for x in (q, k, v)]  # offsets beyond 2^31 live here
    ref_o = F.scaled_dot_product_attention(*last, is_causal=True)
    ref_grads = torch.autograd.grad(ref_o, last, do[-1:].float())
    for ours, ref in zip((o, dq, dk, dv), (ref_o, *ref_grads)):
        assert _rel_err(ours[-1:], ref) < 2e-2
