"""
The phi-1 model: its configuration, the decoder, and generation with a KV cache.

The model of "Textbooks Are All You Need" (Gunasekar et al., 2023), §2.3: a decoder-only
transformer with parallel attention + MLP blocks (as in CodeGen / GPT-J), one LayerNorm per block,
rotary position embeddings on the first 32 dims of each 64-dim head, gelu (tanh) MLPs, biases on
every Linear, and an untied LM head. phi-1 is 24 layers x 2048 wide (1.418 B parameters with the
51200-token vocabulary); phi-1-small is 20 x 1024 (357 M).

Read top to bottom:
  1. PhiConfig and its presets
  2. the model: rotary embedding, attention, MLP, block, and Phi (its forward is the whole model)
  3. generation: the KV cache and sampling (Phi.generate drives them)

Around it: tokenizer.py holds the tokenizer (CodeGen's: GPT-2's byte-level BPE plus 38 tokens for
runs of spaces and tabs), weights.py the checkpoint formats (train.py's, Hugging Face Phi, CodeGen),
attention_kernel.py the Triton FlashAttention that attention() runs on GPUs, and sample.py the
command line that samples from a model:
  python sample.py --ckpt=out --prompt="def fib(n):" --max_new_tokens=64 --temperature=0.8
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer import EOT, N_TOKENS, get_tokenizer

if torch.cuda.is_available():  # the kernel is for GPUs: CPU-only users never import Triton
    from attention_kernel import flash_attention, flash_attention_supported


# -----------------------------------------------------------------------------
# 1. Configuration

@dataclass
class PhiConfig:
    block_size: int = 2048       # context length (max_position_embeddings)
    vocab_size: int = 51200      # 50295 tokens padded to a multiple of 64 for the matmuls
    n_layer: int = 24
    n_head: int = 32
    n_embd: int = 2048
    n_inner: int = 8192          # MLP hidden size, 4 x n_embd
    rotary_dim: int = 32         # rotary on 32 of each head's 64 dims (partial_rotary_factor 0.5)
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    embd_pdrop: float = 0.0      # the paper names attention and residual dropout only: none here
    attn_pdrop: float = 0.1      # §2.3: attention and residual dropout 0.1 in training
    resid_pdrop: float = 0.1

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        head_dim = self.n_embd // self.n_head
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= head_dim:
            raise ValueError(f"rotary_dim {self.rotary_dim} must be even and in "
                             f"1..head_dim ({head_dim})")


PRESETS = {
    "phi-1":       dict(n_layer=24, n_head=32, n_embd=2048, n_inner=8192),
    "phi-1-small": dict(n_layer=20, n_head=16, n_embd=1024, n_inner=4096),
    # CPU presets; no dropout, since their short runs underfit rather than overfit
    "tiny": dict(n_layer=4, n_head=8, n_embd=256, n_inner=1024, rotary_dim=16, block_size=256,
                 attn_pdrop=0.0, resid_pdrop=0.0),
    "nano": dict(n_layer=2, n_head=4, n_embd=64, n_inner=256, rotary_dim=8, block_size=128,
                 attn_pdrop=0.0, resid_pdrop=0.0),
}


# -----------------------------------------------------------------------------
# 2. The model

class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings on the first rotary_dim dims of each head."""

    def __init__(self, config):
        super().__init__()
        R = config.rotary_dim
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, R, 2).float() / R)  # (R/2,)
        freqs = torch.outer(torch.arange(config.block_size).float(), inv_freq)   # (block_size, R/2)
        angles = torch.cat([freqs, freqs], dim=-1)                               # (block_size, R)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, pos):
        # pos: (T,) shared by the batch, or (B, T) when rows are shifted by left padding
        cos, sin = self.cos[pos], self.sin[pos]  # (T, R) or (B, T, R)
        if pos.dim() == 1:
            return cos[None, None], sin[None, None]  # (1, 1, T, R)
        return cos[:, None], sin[:, None]            # (B, 1, T, R)


def apply_rotary(x, cos, sin):
    # x: (B, H, T, D). Dim i of the rotated part pairs with dim i + R/2 ("rotate_half", as GPT-NeoX
    # and HF Phi), not with its neighbour; the remaining D - R dims carry no position.
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    x_rot = x_rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)  # (B, H, T, D)


def attention_reference(q, k, v, mask):
    """The math, for reading and testing: softmax(q k^T / sqrt(D), masked) v, softmax in fp32.
    mask: True = attend."""
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)  # (B, H, Tq, D)


def document_mask(doc_ids):
    """(B, T) document ids -> (B, 1, T, T) boolean mask: causal, and within one's own document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return causal & (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]


ATTENTION_KINDS = ("auto", "triton", "sdpa")
_warned_fallback = False


def attention(q, k, v, dropout_p=0.0, doc_ids=None, mask=None, kind="auto"):
    """Causal self-attention over (B, H, T, D) tensors; the one place the model computes attention.

    How, not what: every kind computes the function of attention_reference. "triton" is our
    FlashAttention (attention_kernel.py), the way phi-1 was trained; "sdpa" is PyTorch's
    scaled_dot_product_attention (cuDNN's or FlashAttention-2's kernels on GPUs); "auto" is Triton
    on CUDA where it supports the shape, else SDPA. `mask` (True = attend) replaces the causal
    mask; generation uses it for padded, cached batches, which always take SDPA (the kernel knows
    causal and document masks only).
    """
    global _warned_fallback
    if q.is_cuda and mask is None and kind != "sdpa":
        if flash_attention_supported(q, k, v):
            return flash_attention(q, k, v, causal=True, doc_ids=doc_ids, dropout_p=dropout_p)
        if kind == "triton":
            raise ValueError(f"attention=triton: the kernel does not support q {tuple(q.shape)} "
                             f"{q.dtype}; use attention=auto or sdpa")
        if not _warned_fallback:
            warnings.warn(f"Triton FlashAttention does not support q {tuple(q.shape)} {q.dtype}; "
                          "using PyTorch SDPA")
            _warned_fallback = True
    if doc_ids is not None:
        mask = document_mask(doc_ids)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=mask is None)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx  # which layer's keys and values it keeps in a KVCache
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        # q, k and v in one matmul; the HF checkpoint's separate q_proj/k_proj/v_proj are
        # concatenated on load (weights.py)
        self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.kind = "auto"  # which attention() computes it: Phi.set_attention

    def forward(self, x, cos, sin, doc_ids=None, cache=None):
        B, T, C = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.unbind(dim=2)                                        # each (B, T, H, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = None
        if cache is not None:  # generation: new keys join the cached ones; the mask says which
            k, v = cache.update(self.layer_idx, k, v)  # each (B, H, T_cache, D)
            mask = cache.mask
        dropout_p = self.attn_pdrop if self.training else 0.0
        y = attention(q, k, v, dropout_p, doc_ids, mask, self.kind)  # (B, H, T, D)
        return self.dense(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, config.n_inner)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # gelu_new: the tanh approximation


class Block(nn.Module):
    """x + Attn(LN(x)) + MLP(LN(x)): one LayerNorm, read by both branches in parallel (CodeGen)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, cos, sin, doc_ids=None, cache=None):
        h = self.input_layernorm(x)
        attn = self.self_attn(h, cos, sin, doc_ids, cache)
        return x + self.resid_dropout(attn) + self.resid_dropout(self.mlp(h))


class Phi(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.rotary = Rotary(config)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)  # untied, with a bias
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # normal(0, 0.02) for every matrix, zero biases (HF Phi's initializer_range; paper silent)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if non_embedding else n

    def hidden_states(self, idx, doc_ids=None, cache=None):
        """Final-LayerNorm outputs (B, T, C): what the LM head reads, and the embedding filter.py
        pools. With a KVCache (generation), idx continues what the cache holds, at its positions."""
        T = idx.shape[1]
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} exceeds block_size "
                                 f"{self.config.block_size}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:
            pos = cache.pos                           # (B, T): left-padded rows start later
        cos, sin = self.rotary(pos)
        x = self.embed_dropout(self.embed_tokens(idx))  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, doc_ids, cache)
        return self.final_layernorm(x)

    def forward(self, idx, targets=None, doc_ids=None):
        # idx, targets: (B, T) token ids, targets == -1 ignored; doc_ids: (B, T) or None
        logits = self.lm_head(self.hidden_states(idx, doc_ids))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def set_attention(self, kind):
        """Run attention as `kind` (ATTENTION_KINDS): a choice of kernel, not of weights, so it is
        no part of the config or the checkpoint. Call it once the model is on its device."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention={kind!r}: choose one of {', '.join(ATTENTION_KINDS)}")
        if kind == "triton" and not self.lm_head.weight.is_cuda:
            raise ValueError("attention=triton needs a CUDA GPU (the kernel is Triton's); "
                             "use attention=auto or sdpa")
        for layer in self.layers:
            layer.self_attn.kind = kind
        return self

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay matrices and embeddings, not biases and LayerNorm gains (nanoGPT; paper silent)
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def flops_per_token(self, seq_len=None):
        # 6 FLOPs per weight per token (forward + backward) for every matmul weight (the embedding
        # lookup is no matmul), plus attention scores and weighted sum: 12 * layers * width * T,
        # halved because it is causal
        T = seq_len or self.config.block_size
        c = self.config
        return 6 * self.get_num_params(non_embedding=True) + 6 * c.n_layer * c.n_embd * T

    # dense bf16 peak FLOP/s of common GPUs (vendor datasheets); the first name in the device name
    # wins (H100 PCIe before H100)
    PEAK_BF16_FLOPS = [
        ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
        ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
        ("A10G", 70e12), ("A10", 125e12), ("L4", 121e12), ("RTX 4090", 165e12),
        ("RTX 3090", 71e12), ("V100", 125e12),
    ]

    def estimate_mfu(self, tokens_per_s, device_name=None):
        """Model FLOPs utilisation: achieved training FLOP/s over the GPU's dense bf16 peak
        (None where unknown)."""
        if device_name is None:
            device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        peak = next((flops for name, flops in self.PEAK_BF16_FLOPS if name in device_name), None)
        return None if peak is None else tokens_per_s * self.flops_per_token() / peak

    # generation (section 3 holds its KV cache and the sampling)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens=128, temperature=0.0, top_k=None, top_p=None,
                 stop=None, eos_token_id=EOT, seed=None, tokenizer=None):
        """Continue each prompt (a list of token ids); returns the new tokens of each, without the
        eos token and cut before the first stop string (those rows are re-encoded from the cut text,
        so decoding gives exactly the text before the stop). temperature 0 is greedy. Prompts of
        different lengths are left-padded.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt, and every prompt needs at least "
                             "one token")
        tok = (tokenizer or get_tokenizer()) if stop else tokenizer
        device, B = self.lm_head.weight.device, len(prompts)
        L = max(len(p) for p in prompts)
        total = L + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(f"longest prompt ({L}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"block_size {self.config.block_size}")
        pad = torch.tensor([L - len(p) for p in prompts], device=device)               # (B,)
        idx = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts], device=device)  # (B, L)
        # the cache holds what the projections produce: under autocast (fp32 weights in a bf16
        # training run) that is autocast's dtype, not the weights'
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else self.lm_head.weight.dtype)
        cache = KVCache(self.config, B, total, pad, dtype)
        cols = cache.columns                                                           # (total,)
        gen = torch.Generator(device=device)  # private: the global RNGs (dropout) stay untouched
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)

        # prefill: all prompt positions at once
        cache.seek(cols[:L])
        logits = self.lm_head(self.hidden_states(idx, cache=cache)[:, -1])             # (B, vocab)

        def decode_step(tok, col):
            # tok: (B, 1) the last sampled tokens, col: (1,) their cache column; shapes never
            # change, so on CUDA the whole step is captured once as a graph and replayed (one
            # launch instead of hundreds per token)
            cache.seek(col)
            return self.lm_head(self.hidden_states(tok, cache=cache)[:, -1])           # (B, vocab)
        if device.type == "cuda" and max_new_tokens > 1:
            first = torch.zeros(B, 1, dtype=torch.long, device=device)
            decode_step = cuda_graph(decode_step, first, cols[L:L + 1])

        out = [[] for _ in range(B)]
        done = [False] * B
        for step in range(max_new_tokens):
            next_tok = sample_next_token(logits, temperature, top_k, top_p, gen)       # (B,)
            for b, t in enumerate(next_tok.tolist()):
                if done[b]:
                    continue
                if t == eos_token_id:
                    done[b] = True
                    continue
                out[b].append(t)
                if stop and _hits_stop(tok, out[b], stop):
                    done[b] = True
            if all(done) or step == max_new_tokens - 1:
                break
            logits = decode_step(next_tok[:, None], cols[L + step:L + step + 1])
        if stop:
            out = [_cut_at_stop(tok, ids, stop) for ids in out]
        return out


# -----------------------------------------------------------------------------
# 3. Generation: the KV cache, sampling, CUDA graphs

class KVCache:
    """The keys and values of every layer during generation, and where the next tokens go.

    Preallocated for the whole generation, so every decoding step has the same shapes (a CUDA
    graph replays them). Row b of the batch is a prompt left-padded by pad[b] columns: `seek(cols)`
    says which columns the next forward fills, and from that the cache knows the tokens' positions
    (counted from each row's first real token) and which cached keys each of them may see (earlier
    columns, never padding).
    """

    def __init__(self, config, batch, length, pad, dtype):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, length, head_dim)
        self.k = torch.zeros(shape, device=pad.device, dtype=dtype)   # (L, B, H, T_cache, D)
        self.v = torch.zeros_like(self.k)
        self.pad = pad                                                # (B,)
        self.columns = torch.arange(length, device=pad.device)        # (T_cache,)
        self.key_ok = self.columns[None, :] >= pad[:, None]           # (B, T_cache): not padding

    def seek(self, cols):
        """The next forward writes tokens at the cache columns cols (T,)."""
        self.cols = cols
        self.pos = (cols[None, :] - self.pad[:, None]).clamp(min=0)               # (B, T)
        sees = (self.columns[None, :] <= cols[:, None]) & self.key_ok[:, None, :]  # (B, T, T_cache)
        # a padding query sees itself, so that its softmax has a term (its output is never used)
        itself = self.columns[None, :] == cols[:, None]                            # (T, T_cache)
        self.mask = (sees | itself)[:, None]                                  # (B, 1, T, T_cache)

    def update(self, layer, k, v):
        """Store one layer's new keys and values (B, H, T, D) at the current columns; returns all of
        that layer's cache."""
        self.k[layer].index_copy_(2, self.cols, k)
        self.v[layer].index_copy_(2, self.cols, v)
        return self.k[layer], self.v[layer]


def cuda_graph(fn, *example_args):
    """Capture fn(*args) as a CUDA graph; returns a function that copies new args in and replays it.

    The example args must be safe to run with: warm-up runs fn for real (here: it writes the cache
    column that the first real step overwrites before anything reads it).
    """
    static_args = [a.clone() for a in example_args]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            fn(*static_args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_args)

    def replay(*args):
        for static, a in zip(static_args, args):
            static.copy_(a)
        graph.replay()
        return static_out
    return replay


def sample_next_token(logits, temperature, top_k, top_p, generator):
    """(B, vocab) logits -> (B,) token ids: greedy at temperature 0, else sampled after top-k and
    top-p filtering."""
    logits = logits.float()
    logits[:, N_TOKENS:] = float("-inf")  # the padding ids 50295..51199 are no tokens
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it hold top_p of the mass; the first stays
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _hits_stop(tok, ids, stop):
    # a stop string of n characters lies within the last n + 1 tokens: only the tail is decoded
    tail = tok.decode(ids[-(max(map(len, stop)) + 1):])
    return any(s in tail for s in stop)


def _cut_at_stop(tok, ids, stop):
    text = tok.decode(ids)
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return ids if cut < 0 else tok.encode(text[:cut])
