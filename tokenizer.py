"""
The tokenizer of phi-1 (§2.3 uses codegen-350M-mono's): GPT-2's byte-level BPE plus 38 tokens for
runs of spaces and tabs, through tiktoken, without torch (data.py, filter.py and synth.py tokenize
without loading it).

    from tokenizer import EOT, get_tokenizer
    # reads assets/gpt2.tiktoken (checked by its sha256) once
    tok = get_tokenizer()
    ids = tok.encode("def f(x):\n    return x")  # [4299, 277, 7, 87, 2599, 198, 50284, 7783, 2124]
    tok.decode(ids)
"""

import base64
import hashlib
import multiprocessing
import os
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import tiktoken

EOT = 50256  # <|endoftext|>: ends every file of the training stream, and generation

#
# phi-1 uses the codegen-350M-mono tokenizer: GPT-2's BPE (ids 0..50256) plus 38 added tokens for
# whitespace runs, which make indented Python about a third shorter. Hugging Face matches added
# tokens *before* BPE, leftmost-longest, and BPE-encodes the pieces between them on their own, so
# "    return" is [4-space token, "return"] and not GPT-2's [3 spaces, " return"]. tiktoken's own
# special-token matching is not longest-first, so the runs are cut by the pre-tokenizing regex
# instead: CODEGEN_PATTERN puts them first and keeps GPT-2's whitespace alternatives from eating
# into a run, which splits the text exactly as "cut the runs, then GPT-2 on each piece" does (tested
# against that reference on the whole stdlib and random strings), in one tiktoken call per document.

# OpenAI's r50k_base ranks
GPT2_RANKS_FILE = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# CodeGen adds them as ' ' * n for n in reversed(range(2, 32)), then
# '\t' * n for n in reversed(range(2, 10))
WHITESPACE_TOKENS = ([" " * n for n in range(31, 1, -1)]
                     + ["\t" * n for n in range(9, 1, -1)])  # ids 50257..50294
# the regex engine is leftmost-first and greedy, which on runs of one character is exactly
# leftmost-longest
WHITESPACE_RUN = r" {2,31}|\t{2,9}"
_WS = r"(?:[^\S \t]| (?! )|\t(?!\t))"  # a whitespace character that does not start a run
CODEGEN_PATTERN = WHITESPACE_RUN + "|" + GPT2_PATTERN.replace(r"\s+(?!\S)|\s+",
                                                              _WS + r"+(?!\S)|" + _WS + "+")
# 50295 real ids; the model's vocabulary is padded to 51200
N_TOKENS = EOT + 1 + len(WHITESPACE_TOKENS)


class Tokenizer:
    def __init__(self, ranks_file=GPT2_RANKS_FILE):
        try:
            data = Path(ranks_file).read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"GPT-2 rank file not found at {ranks_file} ({e.strerror}); "
                                    "it ships with the repository in assets/") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != GPT2_RANKS_SHA256:
            raise ValueError(f"GPT-2 rank file {ranks_file} has sha256 {digest}, "
                             f"expected {GPT2_RANKS_SHA256}")
        ranks = {base64.b64decode(tok): int(rank)
                 for tok, rank in (line.split() for line in data.splitlines() if line)}
        self.bpe = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={"<|endoftext|>": EOT})
        self.eot = EOT
        self.whitespace_id = {ws: EOT + 1 + i for i, ws in enumerate(WHITESPACE_TOKENS)}
        self.id_bytes = {i: ws.encode() for ws, i in self.whitespace_id.items()}
        self.n_vocab = N_TOKENS
        # Encoding: a run is a whole regex piece, and tiktoken maps a piece that is a vocabulary
        # entry straight to its id, so the runs get CodeGen's ids. GPT-2's own multi-space entries
        # can never occur in the other pieces (they hold no two equal blanks in a row), so they give
        # way to CodeGen's; decoding keeps GPT-2's ids.
        codegen_ranks = {**ranks, **{ws.encode(): i for ws, i in self.whitespace_id.items()}}
        self.codegen = tiktoken.Encoding(name="codegen", pat_str=CODEGEN_PATTERN,
                                         mergeable_ranks=codegen_ranks,
                                         special_tokens={"<|endoftext|>": EOT})

    def encode(self, text, allow_eot=False):
        # '<|endoftext|>' typed by a user is plain text; only the data pipeline may ask for the real
        # separator
        if allow_eot:
            return self.codegen.encode(text, allowed_special={"<|endoftext|>"})
        return self.codegen.encode_ordinary(text)

    def encode_array(self, text):
        """encode(text) as a uint16 array (every id is < 65536), built without a Python int per
        token."""
        return self.codegen.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)

    def decode(self, ids):
        out, plain = [], []  # plain: a run of ordinary BPE ids, decoded by tiktoken in one call
        for i in ids:
            i = int(i)
            if i in self.id_bytes:
                out.append(self.bpe.decode_bytes(plain))
                out.append(self.id_bytes[i])
                plain = []
            elif 0 <= i <= EOT:
                plain.append(i)
            else:
                raise ValueError(f"token id {i} is outside the tokenizer's {self.n_vocab} ids")
        out.append(self.bpe.decode_bytes(plain))
        return b"".join(out).decode("utf-8", errors="replace")

    def encode_batch(self, texts, num_workers=None, allow_eot=False):
        """Encode many documents with several processes; order is kept. Small batches stay in this
        process."""
        texts = list(texts)
        num_workers = num_workers or os.cpu_count() or 1
        if num_workers == 1 or sum(map(len, texts)) < 1_000_000:
            return [self.encode(t, allow_eot) for t in texts]
        # fork: the workers inherit this tokenizer instead of re-reading the rank file. They send
        # back uint16 arrays (every id is < 65536) because pickling Python int lists costs more than
        # the encoding saves
        with multiprocessing.get_context("fork").Pool(num_workers) as pool:
            arrays = pool.map(partial(_encode_to_array, allow_eot=allow_eot), texts, chunksize=1)
        return [a.tolist() for a in arrays]


def _encode_to_array(text, allow_eot):
    return np.array(get_tokenizer().encode(text, allow_eot), dtype=np.uint16)


@lru_cache(maxsize=None)
def get_tokenizer():
    return Tokenizer()
