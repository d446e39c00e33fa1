"""phi-1's quality filter (§2.1 of "Textbooks Are All You Need"): LLM labels to a filtered corpus.

python filter.py [STAGE] [--key=value ...]   (no STAGE: all five; STAGE --help: its keys)
  1. load      any source train.py reads (data.py: .py directories, JSONL, .jsonl.gz, Parquet as The
               Stack ships it), exact duplicates dropped, bad inputs skipped and counted
  2. annotate  the LLM judge on any OpenAI-compatible server (--base_url, --model, the key from
               OPENAI_API_KEY) over a random sample (--n_annotate); its cost printed first
               (--dry_run=True: only that); without --base_url a heuristic STAND-IN
  3. embed     a model.py model's mean-pooled final hidden states (--embed_ckpt: a train.py
               checkpoint or a Hugging Face Phi directory), else a TF-IDF STAND-IN; on many GPUs
  4. fit       the random forest on the labelled files; on held-out files: AUC, and the threshold
               that keeps the judge's positive share, with its precision and recall
  5. apply     score every file, keep those at or above that threshold (or --threshold, or the top
               --keep_fraction): the JSONL train.py reads ({"text", "score", "source", "id"})

The paper has GPT-4 label a sample of files for their educational value "for a student whose goal
is to learn basic coding concepts", and a random forest over a pretrained code model's embeddings
predict that label for every file. This file reads in that order (the judge, the embedders, the
forest, then quality_filter: all of it on a list of documents), then the same at the paper's scale
(35 M files) as the stages above, each streaming shards of --shard_docs files and resumable.

  python filter.py                             # all stages, offline, on the CPython stdlib
  python filter.py all --input=my_code/ --base_url=http://127.0.0.1:8080/v1 --model=smollm2
  torchrun --nproc_per_node=8 filter.py embed --out_dir=out-stack --embed_ckpt=codegen-350M-mono
  python bench.py filter --n_files=200000      # throughput and peak memory on a generated corpus
Outputs (in --out_dir, default out-filter/): corpus/, labels.jsonl, embedder.joblib, embeddings/,
forest.joblib, metrics.json, scores/, filtered.jsonl, report.txt, stats.json.
"""
import ast
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import scipy.sparse
import sklearn
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split

import configurator
from configurator import RunError, UserError
from data import Source, describe
from dedup import content_hash
from files import Progress, append_jsonl, atomic_write, read_jsonl
from llm import LLMClient, LLMError
from tokenizer import EOT, get_tokenizer

# Settings that the code below uses as defaults (the command-line keys are at the end of the file)
N_ANNOTATE = 1000          # the paper labelled ~100 k of 35 M files; of the small stdlib, more
MAX_PROMPT_CHARS = 4000    # a file is cut to this many characters in the prompt (fits a 2k context)
LABEL_THRESHOLD = 0.5      # a graded score >= this is a positive ("high educational value") label
EMBED_MAX_TOKENS = 512     # tokens of each file fed to the embedding model (the paper does not say)
EMBED_BATCH_TOKENS = 16384  # padded tokens per embedding batch
MAX_BYTES = 1_000_000      # larger files are data or generated code, not textbooks
SHARD_DOCS = 10_000        # documents per corpus shard: the unit of embedding, scoring, resuming
N_TREES, TEST_FRACTION = 300, 0.2  # the forest's size; the labels it holds out to choose its cut
SEED = 0


# ------------------------------------------------------------------------------------------------
# The judge (§2.1): an LLM asked the paper's question about each file of a random sample

# The paper's question. Its scale is not stated: we ask for a digit 0-5 (a graded answer that a
# small model can still give, and that logprobs turn into an expected value); >= 2.5 is "high".
JUDGE_SYSTEM = ("You are an experienced programming teacher. You answer with a single digit and "
                "nothing else.")
JUDGE_PROMPT = (
    "Determine the educational value of the following code for a student whose goal is to learn "
    "basic coding concepts.\n\n```python\n{code}\n```\n\n"
    "Rate it from 0 (no educational value) to 5 (textbook quality: clear, self-contained, "
    "instructive). Answer with a single digit from 0 to 5.")
JUDGE_RETRY = "Answer with a single digit from 0 to 5 only."
SCALE = 5
CONTEXT_ERROR = re.compile(r"HTTP 400.*(context|too long|too many tokens)", re.I | re.S)
DIGIT = re.compile(r"(?<![\d.])([0-5])(?!\d|\.\d)")  # "3", "3.", "3/5"; not "10" or "3.5"


class LLMJudge:
    """Asks an OpenAI-compatible server the paper's question, at temperature 0, for one digit."""

    MAX_TOKENS = 12  # room for a sentence: small models say "The educational value ... is 3."

    def __init__(self, client, max_prompt_chars=MAX_PROMPT_CHARS, logprobs=True):
        self.client, self.max_prompt_chars, self.logprobs = client, max_prompt_chars, logprobs
        self.name, self.counts, self._lock = f"llm:{client.model}", Counter(), threading.Lock()

    def messages(self, doc, chars):
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_PROMPT.format(code=doc["text"][:chars])}]

    def _ask(self, messages):
        params = dict(temperature=0, max_tokens=self.MAX_TOKENS)
        if self.logprobs:
            params.update(logprobs=True, top_logprobs=10)
        choice = self.client.chat(messages, **params)["choices"][0]
        content = choice["message"].get("content") or ""
        return content, parse_rating(content), rating_from_logprobs(choice)

    def _label(self, doc, chars):
        messages = self.messages(doc, chars)
        content, rating, graded = self._ask(messages)
        if rating is None:  # malformed: ask once more, showing the model its answer; never guess
            with self._lock:
                self.counts["malformed_retried"] += 1
            messages += [{"role": "assistant", "content": content},
                         {"role": "user", "content": JUDGE_RETRY}]
            content, rating, graded = self._ask(messages)
        rec = {"hash": doc["hash"], "id": doc["id"], "judge": self.name, "answer": content[:80]}
        if rating is None:
            return {**rec, "status": "unparseable", "rating": None, "score": None, "label": None}
        score = (graded if graded is not None else rating) / SCALE
        return {**rec, "status": "ok", "rating": rating, "score": round(score, 4),
                "label": int(score >= LABEL_THRESHOLD)}

    def label(self, doc):
        chars = self.max_prompt_chars
        while True:  # too long for the server's context (dense data: a token a character): cut more
            try:
                return self._label(doc, chars)
            except LLMError as e:
                if chars < 500 or not CONTEXT_ERROR.search(str(e)):
                    raise
                chars //= 2
                with self._lock:
                    self.counts["prompt_shortened"] += 1

    def map(self, docs):
        return self.client.map(self.label, docs)

    def cost(self, docs):
        """Requests and tokens that labelling `docs` sends, before retries and second asks. phi-1's
        tokenizer stands in for the server's own, which is not known here."""
        texts = [m["content"] for d in docs for m in self.messages(d, self.max_prompt_chars)]
        prompt_tokens = sum(map(len, get_tokenizer().encode_batch(texts))) if texts else 0
        return {"files": len(docs), "requests": len(docs), "prompt_tokens": prompt_tokens,
                "completion_tokens": len(docs) * self.MAX_TOKENS}


def parse_rating(content):
    """The first standalone digit 0-5 near the start of the answer ("3", "Rating: 4", "2/5")."""
    m = DIGIT.search((content or "").strip()[:80])
    return int(m.group(1)) if m else None


def rating_from_logprobs(choice):
    """Expected rating under the model's probabilities for the digit it answered (None without
    logprobs): the probability mass of the digit tokens among the top_logprobs of the first token
    that is a digit 0-5, renormalised (" 3" and "3" count as the same digit)."""
    for entry in ((choice.get("logprobs") or {}).get("content") or []):
        token = (entry.get("token") or "").strip()
        if len(token) != 1 or token not in "012345":
            continue
        mass = Counter()
        for alt in entry.get("top_logprobs") or [entry]:
            t = (alt.get("token") or "").strip()
            if len(t) == 1 and t in "012345":
                mass[int(t)] += math.exp(alt["logprob"])
        total = sum(mass.values())
        return sum(d * p for d, p in mass.items()) / total if total > 0 else None
    return None


class HeuristicJudge:
    """STAND-IN for the LLM judge when no server is given: a transparent score, not the paper's.

    Weighted checks, each in [0, 1]: docstrings on the module, classes and functions (0.35); comment
    lines, full marks from one per 7 code lines (0.15); meaningful names, i.e. over half of them
    longer than two characters (0.15); logic, i.e. branches and loops, full marks from one per
    function (0.15); moderate length, 20 to 500 code lines (0.2). It teaches the forest the paper's
    criterion, so what has no lesson in it goes to the bottom: auto-generated files and files that
    are mostly data literals (tables, codecs' maps) score a fifth of that, files with no branch or
    loop at all (registration boilerplate, constants) half, files that are not Python 0.1."""

    name = "heuristic-stand-in"
    AUTOGEN = re.compile(r"auto-?generated|automatically generated|generated (by|from|with)|"
                         r"do not edit|don't edit", re.I)
    SHORT_OK = {"i", "j", "k", "n", "x", "y", "_", "e", "f"}
    LOGIC = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.comprehension,
             ast.IfExp, ast.Match)
    counts = Counter()  # (the LLM judge counts its retries here; this one never retries)

    def score(self, text):
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return 0.1
        lines = [ln.strip() for ln in text.splitlines()]
        code_lines = sum(1 for ln in lines if ln and not ln.startswith("#"))
        comment_lines = sum(1 for ln in lines if ln.startswith("#"))
        defs, names, logic = [], [], 0
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.append(n)
                names.append(n.name)
            elif isinstance(n, ast.Name):
                names.append(n.id)
            elif isinstance(n, ast.arg):
                names.append(n.arg)
            elif isinstance(n, self.LOGIC):
                logic += 1
        documented = sum(1 for n in [tree, *defs] if ast.get_docstring(n))
        meaningful = sum(1 for s in names if len(s) >= 3 or s in self.SHORT_OK) / max(len(names), 1)
        length = (1.0 if 20 <= code_lines <= 500 else
                  code_lines / 20 if code_lines < 20 else 500 / code_lines)
        s = (0.35 * documented / (1 + len(defs))
             + 0.15 * min(1.0, 7 * comment_lines / max(code_lines, 1))
             + 0.15 * max(0.0, 2 * meaningful - 1)
             + 0.15 * min(1.0, logic / max(len(defs), 1))
             + 0.2 * length)
        if self.AUTOGEN.search("\n".join(lines[:30])) or data_lines(tree) >= 0.5 * code_lines:
            s *= 0.2
        elif not logic:
            s *= 0.5
        return s

    def label(self, doc):
        score = self.score(doc["text"])
        return {"hash": doc["hash"], "id": doc["id"], "judge": self.name, "status": "ok",
                "rating": None, "score": round(score, 4), "label": int(score >= LABEL_THRESHOLD)}

    def map(self, docs):
        return ((d, self.label(d)) for d in docs)


def data_lines(tree):
    """Lines of a module spent on data literals: containers of 8 or more constants (tables, maps)
    and multi-line strings that are not docstrings. Generated tables and codecs are mostly this."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef)) and ast.get_docstring(n) is not None}

    def constant(n):
        if isinstance(n, ast.UnaryOp):
            n = n.operand
        if isinstance(n, (ast.List, ast.Tuple, ast.Set)):
            return all(map(constant, n.elts))
        if isinstance(n, ast.Dict):
            return None not in n.keys and all(map(constant, n.keys + n.values))
        return isinstance(n, ast.Constant)

    spans = []
    for n in ast.walk(tree):
        table = isinstance(n, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and len(
            n.keys if isinstance(n, ast.Dict) else n.elts) >= 8 and constant(n)
        text = (isinstance(n, ast.Constant) and isinstance(n.value, str) and n.end_lineno > n.lineno
                and id(n) not in docstrings)
        if table or text:
            spans.append((n.lineno, n.end_lineno))
    return len(set().union(*(range(lo, hi + 1) for lo, hi in spans)))  # nested ones count once


# ------------------------------------------------------------------------------------------------
# The features: the output embedding of a pretrained code model, for every file

class ModelEmbedder:
    """The paper's features: the output embedding of a pretrained decoder, i.e. its final hidden
    states (after the final LayerNorm, before the LM head) mean-pooled over a file's first tokens.

    Files are sorted by length and packed into batches of about `batch_tokens` tokens, in bf16 on
    GPUs. It embeds token ids, so stage_embed tokenizes the next shard while the model embeds this
    one. torch is imported here only: the offline stand-ins run without it."""

    def __init__(self, ckpt, device=None, max_tokens=EMBED_MAX_TOKENS,
                 batch_tokens=EMBED_BATCH_TOKENS):
        self.ckpt, self.device, self.max_tokens = str(ckpt), device, max_tokens
        self.batch_tokens = batch_tokens
        self.name, self.id, self._model = f"model:{Path(self.ckpt).name}", uuid.uuid4().hex, None

    def __getstate__(self):  # saved with the forest as a recipe (path, settings), never the weights
        return {**self.__dict__, "_model": None}

    def model(self):
        if self._model is None:
            import torch
            from weights import load_model
            local = os.environ.get("LOCAL_RANK", "0")  # under torchrun, each process on its own GPU
            device = self.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
            self._model = load_model(self.ckpt, device=device)
        return self._model

    def tokens_per_file(self):
        return min(self.max_tokens, self.model().config.block_size)

    def embed(self, ids):
        import torch
        model = self.model()
        device = next(model.parameters()).device
        out = np.zeros((len(ids), model.config.n_embd), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together
        start = 0
        while start < len(order):
            longest = max(len(ids[order[start]]), 1)
            batch = order[start:start + max(1, self.batch_tokens // longest)]
            start += len(batch)
            idx = torch.full((len(batch), longest), EOT, dtype=torch.long)  # (B, T) right padding
            for row, i in enumerate(batch):
                idx[row, :len(ids[i])] = torch.from_numpy(ids[i])
            lengths = torch.tensor([max(len(ids[i]), 1) for i in batch])
            mask = (torch.arange(longest)[None, :] < lengths[:, None]).float()   # (B, T)
            bf16 = device.type == "cuda"
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                h = model.hidden_states(idx.to(device)).float()                   # (B, T, C)
            # causal attention: padding on the right cannot change the positions before it, so
            # masking the mean is all it takes for a file to embed the same alone or in a batch
            mask = mask.to(h.device)
            pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)     # (B, C)
            out[batch] = pooled.cpu().numpy()
        return out

    def transform(self, texts):
        return self.embed(head_ids(texts, self.tokens_per_file()))


class TfidfEmbedder:
    """STAND-IN for the paper's model embeddings when no --embed_ckpt is given: TF-IDF of hashed
    token uni- and bigrams, reduced to `dims` dimensions by truncated SVD (LSA) for the forest.

    It reads what the model embedder reads, a file's first EMBED_MAX_TOKENS tokens, and after the
    tokenizer it is array arithmetic, so it keeps up with millions of files: the columns, IDF
    weights and SVD are fit on a seeded sample of `fit_sample` files, then applied to each shard."""

    N_HASHED = 2 ** 20  # hashed n-gram buckets, before keeping the most frequent columns

    def __init__(self, dims=128, max_columns=2 ** 14, fit_sample=5000, seed=SEED):
        self.dims, self.max_columns, self.fit_sample = dims, max_columns, fit_sample
        self.seed, self.name, self.id = seed, f"tfidf-svd{dims}-stand-in", uuid.uuid4().hex
        self.tfidf = TfidfTransformer(sublinear_tf=True)
        self.columns = self.svd = None

    def tokens_per_file(self):
        return EMBED_MAX_TOKENS

    def counts(self, ids):
        """(N, N_HASHED) sparse counts of each file's token unigrams and bigrams."""
        lengths = np.array([len(a) for a in ids], dtype=np.int64)
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)         # (L,) all tokens
        row = np.repeat(np.arange(len(ids)), lengths)                         # (L,) file of each
        same = row[1:] == row[:-1]                                           # (L-1,) a bigram
        vocab = 1 << 16
        bigrams = vocab + flat[:-1][same] * vocab + flat[1:][same]
        keys = np.concatenate([flat, bigrams])                               # unigram | bigram
        rows = np.concatenate([row, row[1:][same]])
        # Fibonacci hashing: multiply by 2**64 / golden ratio, keep the top 20 bits
        golden = np.uint64(0x9E3779B97F4A7C15)
        cols = ((keys.astype(np.uint64) * golden) >> np.uint64(64 - 20)).astype(np.int64)
        x = scipy.sparse.csr_matrix((np.ones(len(keys), np.float32), (rows, cols)),
                                    shape=(len(ids), self.N_HASHED))
        x.sum_duplicates()
        return x

    def fit(self, texts):
        x = self.counts(head_ids(texts))
        # keep the n-grams found in the most files (at least two, when there are any such): the
        # SVD's cost grows with the columns, and an n-gram seen once says nothing about similarity
        df = x.getnnz(axis=0)
        n = min(self.max_columns, int((df >= 2).sum()) or int((df > 0).sum()))
        self.columns = np.sort(np.argsort(-df, kind="stable")[:n])
        x = self.tfidf.fit_transform(x[:, self.columns])                      # (S, n)
        dims = max(1, min(self.dims, x.shape[0] - 1, n - 1))
        self.svd = TruncatedSVD(dims, random_state=self.seed).fit(x)
        return self

    def embed(self, ids, chunk=2048):
        out = []
        for i in range(0, len(ids), chunk):  # a chunk's n-gram arrays are ~100 MB; a shard's GBs
            x = self.tfidf.transform(self.counts(ids[i:i + chunk])[:, self.columns])
            out.append(self.svd.transform(x).astype(np.float32))              # (chunk, dims)
        return np.concatenate(out) if out else np.zeros((0, self.svd.n_components), np.float32)

    def transform(self, texts):
        return self.embed(head_ids(texts))


def phi1_tokens(texts):
    """Each text's phi-1 tokens (the ones train.py will see), tokenized on every core, 1024 texts
    at a time (lists of Python ints: only those of one batch are held here)."""
    encode = get_tokenizer().codegen.encode_ordinary_batch
    for i in range(0, len(texts), 1024):
        yield from encode(texts[i:i + 1024], num_threads=os.cpu_count() or 1)


def head_ids(texts, max_tokens=EMBED_MAX_TOKENS):
    """The first max_tokens tokens of each text, of its first 8 characters a token (code averages
    ~3: the cut is never reached)."""
    return [np.asarray(a[:max_tokens], dtype=np.int64)
            for a in phi1_tokens([t[:8 * max_tokens] for t in texts])]


# ------------------------------------------------------------------------------------------------
# The forest: learns the judge's label from the embeddings, and scores every file

def fit_forest(x, y, n_estimators=N_TREES, test_fraction=TEST_FRACTION, seed=SEED):
    """A random forest on labelled embeddings, its threshold chosen and its metrics measured on a
    held-out split, then refit on all labels -> (forest, metrics, held-out (scores, labels)). The
    paper gives no forest settings: balanced class weights as "textbook quality" is usually the
    rarer class, a few samples per leaf against noisy labels. Nor a threshold (it kept 6 of 35 B
    tokens), and these settings compress the probabilities (with 15 % positive labels, 0.5 kept
    under 1 % of files): the threshold is the held-out score keeping the judge's positive share."""
    y = np.asarray(y)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise UserError(f"the labels need both classes, at least 2 of each, to fit a forest; got "
                        f"{counts[0]} negative and {counts[1]} positive: label more (--n_annotate)")
    forest = dict(n_estimators=n_estimators, min_samples_leaf=2, n_jobs=-1, random_state=seed,
                  class_weight="balanced_subsample")
    n_test = max(2, round(test_fraction * len(y)))
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    clf = RandomForestClassifier(**forest).fit(x_tr, y_tr)
    p = clf.predict_proba(x_te)[:, list(clf.classes_).index(1)].round(4)  # as scores/ holds them
    threshold = np.sort(p)[::-1][max(1, round(y.mean() * len(p))) - 1]
    metrics = {
        "n_labelled": int(len(y)), "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
        "positive_fraction": round(float(y.mean()), 4),
        "majority_baseline_accuracy": round(float(max(y_te.mean(), 1 - y_te.mean())), 4),
        "roc_auc": round(float(roc_auc_score(y_te, p)), 4) if len(set(y_te)) == 2 else None,
        **held_out_metrics(p, y_te, threshold)}
    return RandomForestClassifier(**forest).fit(x, y), metrics, (p, y_te)  # refit: every label


def held_out_metrics(p, y, threshold):
    """What keeping the held-out files scored >= threshold keeps, and how well."""
    kept = (p >= threshold).astype(int)
    return {"threshold": round(float(threshold), 4), "held_out_kept": round(float(kept.mean()), 4),
            "accuracy": round(float(accuracy_score(y, kept)), 4),
            "precision": round(float(precision_score(y, kept, zero_division=0)), 4),
            "recall": round(float(recall_score(y, kept, zero_division=0)), 4)}


def select(scores, threshold, keep_fraction=None):
    """The kept files' indices: the top `keep_fraction` by score if set, else score >= threshold."""
    if keep_fraction is not None:
        k = round(keep_fraction * len(scores))
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    return np.flatnonzero(scores >= threshold)


def forest_summary(m):
    """The forest's held-out metrics at a threshold in one line."""
    auc = f"{m['roc_auc']:.3f}" if m.get("roc_auc") is not None else "n/a"
    return (f"held-out ROC AUC {auc} on {m['n_test']} files; score >= {m['threshold']} keeps "
            f"{m['held_out_kept']:.1%} of them (the judge's positive share: "
            f"{m['positive_fraction']:.1%}) at precision {m['precision']:.3f}, recall "
            f"{m['recall']:.3f}, accuracy {m['accuracy']:.3f} (majority baseline "
            f"{m['majority_baseline_accuracy']:.3f})")


def load_forest(path):
    """The saved bundle (joblib as scikit-learn recommends: a pickle, only from files you trust)."""
    bundle = joblib.load(path)
    if bundle["sklearn_version"] != sklearn.__version__:
        print(f"warning: {path} was saved with scikit-learn {bundle['sklearn_version']}, this is "
              f"{sklearn.__version__}; refit if its scores look wrong", file=sys.stderr)
    if "held_out" not in bundle:
        raise UserError(f"{path} was saved by an older filter.py: run the fit stage again")
    return bundle


# ------------------------------------------------------------------------------------------------
# The whole recipe, in memory: judge -> embed -> fit -> select

def quality_filter(docs, judge, embedder, n_annotate=N_ANNOTATE, n_estimators=N_TREES, seed=SEED):
    """§2.1 on a list of documents as the load stage makes them ({"id", "hash", "text"}): the judge
    labels a random sample, the embedder embeds every file (the TF-IDF stand-in first learns its
    columns from them), the forest learns the labels from the embeddings, and the files it scores
    at or above its held-out threshold are kept. -> (the kept documents, the forest's metrics)"""
    sample = random.Random(seed).sample(docs, min(n_annotate, len(docs)))
    labels = {d["hash"]: r["label"] for d, r in judge.map(sample)
              if not isinstance(r, Exception) and r["label"] is not None}
    texts = [d["text"] for d in docs]
    if isinstance(embedder, TfidfEmbedder):
        embedder.fit(texts)
    x = embedder.transform(texts)                                                  # (docs, dims)
    rows = [i for i, d in enumerate(docs) if d["hash"] in labels]
    y = [labels[docs[i]["hash"]] for i in rows]
    clf, metrics, _ = fit_forest(x[rows], y, n_estimators, TEST_FRACTION, seed)
    scores = clf.predict_proba(x)[:, list(clf.classes_).index(1)]
    return [docs[i] for i in select(scores, metrics["threshold"])], metrics


# ================================================================================================
# The same at 35 M files: the five stages, in --out_dir, over shards of --shard_docs documents
# (the unit of writing, of resuming and, under torchrun, of the split between processes)
# ------------------------------------------------------------------------------------------------
# 1. Load: every source read lazily (data.py, the reader train.py uses), exact duplicates dropped

def stage_load(a):
    """Shards corpus/00000.jsonl, ... of --shard_docs documents, each written atomically, then
    corpus/index.json with a digest of every content hash. A killed load simply runs again (it is
    cheap); the later stages key their shards by that digest, and keep them while it is the same."""
    t0, counts, shards = time.time(), Counter(), []
    docs_in = corpus_docs(a.input, a.max_bytes, counts, a.text_column)  # a missing source: error
    corpus = Path(a.out_dir) / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "index.json").unlink(missing_ok=True)  # the shards are about to change: untrusted
    remove_torn_writes(corpus)
    digest = hashlib.sha256(f"shard_docs={a.shard_docs}".encode())  # cut otherwise: other shards
    progress = Progress("loaded", None)
    while shard := list(itertools.islice(docs_in, a.shard_docs)):
        path = corpus / f"{len(shards):05d}.jsonl"
        atomic_write(path, jsonl_writer(shard))
        shards.append({"file": path.name, "docs": len(shard)})
        digest.update("".join(doc["hash"] for doc in shard).encode())
        progress.update(len(shard))
    docs, skipped = sum(s["docs"] for s in shards), describe(counts)
    if not docs:
        raise UserError(f"no usable documents in {a.input} (skipped: {skipped or 'nothing'})")
    for stale in corpus.glob("*.jsonl"):  # shards of an earlier, larger corpus in the same out_dir
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
    index = {"input": str(a.input), "docs": docs, "shards": shards,
             "digest": digest.hexdigest()[:24], "skipped": dict(counts)}
    atomic_write(corpus / "index.json", json.dumps(index, indent=1))
    seconds = round(time.time() - t0, 2)
    print(f"load: {docs:,} documents from {a.input} (skipped: {skipped or 'none'}) in "
          f"{seconds:.1f} s -> {len(shards)} shard(s) in {corpus}")
    save_stats(a.out_dir, "load", {"loaded": docs, "seconds": seconds})
    return index


def corpus_docs(inputs, max_bytes, counts, text_column=""):
    """{"id", "source", "hash", "text"} for each usable, first-seen document of the comma-separated
    sources, in order; what is skipped is counted in `counts` (data.py's reasons, plus oversized,
    binary and duplicate). Every source is opened here: a missing one fails before anything runs."""
    sources = [Source(spec.strip(), text_column) for spec in str(inputs).split(",") if spec.strip()]
    return _first_seen(sources, max_bytes, counts)


def _first_seen(sources, max_bytes, counts):
    seen = SeenHashes()
    for source in sources:
        root, name = str(source.root) + os.sep, Path(source.spec).name or source.spec
        for doc_id, text in source:
            doc_id = doc_id[len(root):] if doc_id.startswith(root) else doc_id  # source-relative
            if len(text) > max_bytes or len(text.encode("utf-8")) > max_bytes:
                counts["oversized"] += 1
            elif "\x00" in text:
                counts["binary"] += 1
            else:
                h = content_hash(text)
                if seen.add(np.uint64(int(h[:16], 16))):
                    yield {"id": doc_id, "source": name, "hash": h, "text": text}
                else:
                    counts["duplicate"] += 1
        counts.update(source.skipped)


class SeenHashes:
    """64-bit content hashes in 8 bytes each (a Python set of ints takes ~70; 35 M files: 280 MB): a
    sorted array plus a small set of recent ones, merged into the array every `flush` hashes."""

    def __init__(self, flush=1 << 20):
        self.sorted, self.recent, self.flush = np.zeros(0, np.uint64), set(), flush

    def add(self, h):
        """Add h; return False if it was there already."""
        i = np.searchsorted(self.sorted, h)
        if h in self.recent or (i < len(self.sorted) and self.sorted[i] == h):
            return False
        self.recent.add(h)
        if len(self.recent) >= self.flush:
            recent = np.fromiter(self.recent, np.uint64, len(self.recent))
            self.sorted, self.recent = np.union1d(self.sorted, recent), set()
        return True


def jsonl_writer(records):
    """A writer for atomic_write: the records as JSON lines."""
    return lambda f: f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")
                                  for r in records)


def remove_torn_writes(folder):
    """Remove what a run killed inside atomic_write leaves (.NAME.PID.tmp), while no one writes."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def corpus_index(out_dir):
    path = Path(out_dir) / "corpus" / "index.json"
    if not path.exists():
        raise UserError(f"{path} not found: run `python filter.py load --out_dir={out_dir}` first")
    return json.loads(path.read_text())


def shard_docs(out_dir, shard):
    return [r for _, r in read_jsonl(Path(out_dir) / "corpus" / shard["file"])]


def corpus_sample(out_dir, index, n, seed):
    """A seeded random sample of n documents, read shard by shard: only the sample is held."""
    chosen = np.sort(random.Random(seed).sample(range(index["docs"]), min(n, index["docs"])))
    sample, start = [], 0
    for shard in index["shards"]:
        lo, hi = np.searchsorted(chosen, [start, start + shard["docs"]])
        if hi > lo:
            docs = shard_docs(out_dir, shard)
            sample += [docs[i - start] for i in chosen[lo:hi]]
        start += shard["docs"]
    return sample


def save_stats(out_dir, stage, stats):
    """Each stage's numbers go under its name in stats.json, which the report reads."""
    path = Path(out_dir) / "stats.json"
    all_stats = json.loads(path.read_text()) if path.exists() else {}
    all_stats[stage] = stats
    atomic_write(path, json.dumps(all_stats, indent=2))


# ------------------------------------------------------------------------------------------------
# 2. Annotate: the judge over a random sample, each label cached as it arrives

def stage_annotate(a):
    index = corpus_index(a.out_dir)
    docs = corpus_sample(a.out_dir, index, a.n_annotate, a.seed)  # only the sample is in memory
    judge = HeuristicJudge()
    if a.base_url:
        if not a.model:
            raise UserError("--model is required with --base_url (the name the server serves)")
        client = LLMClient(a.base_url, a.model, concurrency=a.concurrency, timeout=a.timeout,
                           max_retries=a.max_retries)
        judge = LLMJudge(client, a.max_prompt_chars, logprobs=a.logprobs)
    labels_path = Path(a.labels or Path(a.out_dir) / "labels.jsonl")
    labels, counts = annotate(docs, labels_path, judge, len(docs), a.seed, a.dry_run)
    if a.dry_run:
        return labels
    usable = [r for r in labels.values() if r["label"] is not None]
    stats = {"judge": judge.name, "labels_file": str(labels_path), "labelled": len(usable),
             "positive": sum(r["label"] for r in usable), **counts}
    if isinstance(judge, LLMJudge):
        stats.update(concurrency=client.concurrency, **client.usage, **client.stats)
    rate = (f", {counts['labels_per_s']} labels/s at concurrency {stats.get('concurrency', 1)}"
            if counts["labels_per_s"] else "")
    print(f"annotate: {len(usable)} usable labels ({stats['positive']} positive), "
          f"{counts['unparseable']} unparseable, {counts['failed']} failed{rate} -> {labels_path}")
    save_stats(a.out_dir, "annotate", stats)
    if not usable:
        raise RunError(f"the judge gave no usable label ({counts['failed']} requests failed, "
                       f"{counts['unparseable']} answers unparseable): nothing to fit a forest on")
    return labels


def annotate(docs, labels_path, judge, n_annotate=N_ANNOTATE, seed=SEED, dry_run=False):
    """Label a random sample of `n_annotate` documents, appending each label to `labels_path` as it
    arrives; returns ({hash: label record} for the corpus, counts). The cache is keyed by content
    hash: labels already there are not asked again, so a killed run resumes where it stopped; a
    request that fails for good (LLMError) writes nothing, and is asked again next time. dry_run:
    only say what would be asked (and an LLM judge's cost)."""
    labels_path = Path(labels_path)
    cached = {r["hash"]: r for r in read_labels(labels_path)}
    other = {r.get("judge") for r in cached.values()} - {judge.name}
    if other:
        raise UserError(f"{labels_path} holds labels from {sorted(map(str, other))}, not "
                        f"{judge.name}: pass another --labels file (or remove that one)")
    sample = random.Random(seed).sample(docs, min(n_annotate, len(docs)))
    todo = [d for d in sample if d["hash"] not in cached]
    counts = Counter(cached=len(sample) - len(todo), asked=len(todo))
    stand_in = ("  (STAND-IN heuristic, not an LLM: pass --base_url for the paper's LLM judge)"
                if isinstance(judge, HeuristicJudge) else "")
    print(f"annotate: judge {judge.name}{stand_in}; sample {len(sample)} of {len(docs)}, "
          f"{counts['cached']} already in {labels_path}, {len(todo)} to ask")
    if isinstance(judge, LLMJudge):  # what the run will cost, before it costs anything
        cost = judge.cost(todo)
        print(f"annotate: will send {cost['requests']:,} requests ({cost['files']:,} files; a "
              f"malformed answer is asked once more): ~{cost['prompt_tokens']:,} prompt tokens "
              f"(phi-1 tokenizer, an estimate of the server's), at most "
              f"{cost['completion_tokens']:,} completion tokens")
    if dry_run:
        return {}, counts
    progress, t0 = Progress("labels", len(todo)), time.time()
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    with open(labels_path, "a", encoding="utf-8") as f:
        for doc, rec in judge.map(todo):  # written here, by one thread, in arrival order
            if isinstance(rec, Exception):
                counts["failed"] += 1
                if counts["failed"] <= 3:
                    print(f"  label failed for {doc['id']}: {rec}", file=sys.stderr)
            else:
                append_jsonl(f, rec)
                cached[rec["hash"]] = rec
                counts[rec["status"]] += 1
            progress.update()
    counts.update(judge.counts)
    seconds, answered = time.time() - t0, counts["ok"] + counts["unparseable"]
    counts["labels_per_s"] = round(answered / seconds, 2) if todo and seconds else None
    in_corpus = {d["hash"] for d in docs}
    return {h: r for h, r in cached.items() if h in in_corpus}, counts


def read_labels(path):
    """The records of labels.jsonl (appended one by one: a torn last line from a kill is cut)."""
    return [r for _, r in read_jsonl(path, tail="repair")]


# ------------------------------------------------------------------------------------------------
# 3. Embed: every shard, by as many processes as torchrun starts, each writing its own shards

def stage_embed(a):
    """Embed every shard this rank owns (k % world) that has no embeddings/k.npy (float16) yet;
    reading and tokenizing the next shard overlaps with embedding this one."""
    out, index = Path(a.out_dir), corpus_index(a.out_dir)
    rank, world = rank_and_world()
    embedder = the_embedder(a, index)
    mine = range(rank, len(index["shards"]), world)
    todo = [k for k in mine if not shard_path(out, "embeddings", k, ".npy").exists()]
    who = f"embed (rank {rank} of {world})" if world > 1 else "embed"
    print(f"{who}: {embedder.name}; {len(mine) - len(todo)} of {len(mine)} shard(s) already "
          f"embedded, {len(todo)} to do")
    progress = Progress("embedded", sum(index["shards"][k]["docs"] for k in todo))
    t0, files, tokens = time.time(), 0, 0

    def read(k):
        texts = [d["text"] for d in shard_docs(out, index["shards"][k])]
        return head_ids(texts, embedder.tokens_per_file())

    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(read, todo[0]) if todo else None
        for i, k in enumerate(todo):
            ids = ahead.result()
            if i + 1 < len(todo):
                ahead = reader.submit(read, todo[i + 1])
            x = embedder.embed(ids).astype(np.float16)                          # (docs, dims)
            atomic_write(shard_path(out, "embeddings", k, ".npy"), lambda f: np.save(f, x))
            files, tokens = files + len(ids), tokens + sum(map(len, ids))
            progress.update(len(ids))
    seconds = time.time() - t0
    barrier()
    stats = {"embedder": embedder.name, "embedder_id": embedder.id, "corpus": index["digest"],
             "world": world, "files": files, "tokens": tokens, "seconds": round(seconds, 2),
             "files_per_s": round(files / max(seconds, 1e-9), 1),
             "tokens_per_s": round(tokens / max(seconds, 1e-9)), "machine": this_machine(embedder)}
    print(f"{who}: {files:,} files, {tokens:,} tokens in {seconds:.1f} s "
          f"({stats['files_per_s']:,} files/s, {stats['tokens_per_s']:,} tokens/s) -> "
          f"{out / 'embeddings'}/")
    if rank == 0:
        save_stats(out, "embed", stats)
    return embedder


def the_embedder(a, index):
    """The run's embedder, made (and fit) by rank 0 and saved as embedder.joblib before any shard is
    embedded; reused, with the shards it embedded, while the corpus and embedder stay the same."""
    out, path = Path(a.out_dir), Path(a.out_dir) / "embedder.joblib"
    want = f"model:{Path(a.embed_ckpt).name}" if a.embed_ckpt else TfidfEmbedder(seed=a.seed).name
    if rank_and_world()[0] == 0:
        saved = joblib.load(path) if path.exists() else None
        if not (saved and saved["corpus"] == index["digest"] and saved["embedder"].name == want):
            shutil.rmtree(out / "embeddings", ignore_errors=True)  # another corpus's or embedder's
            if a.embed_ckpt:
                embedder = ModelEmbedder(a.embed_ckpt, a.device, a.embed_max_tokens,
                                         a.embed_batch_tokens)
            else:
                embedder = TfidfEmbedder(seed=a.seed)
                print("embed: no --embed_ckpt: a STAND-IN (hashed n-gram TF-IDF + SVD) replaces "
                      f"the code model's embeddings, fit on up to {embedder.fit_sample:,} files")
                sample = corpus_sample(out, index, embedder.fit_sample, a.seed)
                embedder.fit([d["text"] for d in sample])
            saved = {"corpus": index["digest"], "embedder": embedder}
            atomic_write(path, lambda f: joblib.dump(saved, f))
        (out / "embeddings").mkdir(exist_ok=True)
        remove_torn_writes(out / "embeddings")  # the other ranks wait at the barrier below
    barrier()
    return joblib.load(path)["embedder"]


def rank_and_world():
    """(rank, world size) under torchrun (torch.distributed, initialised on first use), else (0, 1).
    The ranks only meet at barriers, so gloo serves CPUs and GPUs alike, on one node or many
    sharing the out_dir."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier():
    if rank_and_world()[1] > 1:
        import torch.distributed as dist
        dist.barrier()


def shard_path(out_dir, kind, k, suffix):
    return Path(out_dir) / kind / f"{k:05d}{suffix}"


def read_embeddings(out_dir, k):
    """Shard k's embeddings, as float32; one clear error if they are missing."""
    path = shard_path(out_dir, "embeddings", k, ".npy")
    if not path.exists() or not (Path(out_dir) / "embedder.joblib").exists():
        raise UserError(f"{path} is missing: run `python filter.py embed --out_dir={out_dir}`")
    return np.load(path).astype(np.float32)


def this_machine(embedder):
    """Where the throughput figures come from: cores, the GPU if one embedded, the load."""
    model, gpu = getattr(embedder, "_model", None), ""
    if model is not None and next(model.parameters()).is_cuda:
        import torch
        gpu = f", {torch.cuda.get_device_name(next(model.parameters()).device)}"
    return (f"{os.cpu_count()}-core {platform.machine()} {platform.system()}{gpu}, "
            f"load average {os.getloadavg()[0]:.1f}")


# ------------------------------------------------------------------------------------------------
# 4. Fit: the forest on the embeddings of the labelled files

def stage_fit(a):
    out, index = Path(a.out_dir), corpus_index(a.out_dir)
    records = read_labels(Path(a.labels or out / "labels.jsonl"))
    labels = {r["hash"]: r["label"] for r in records if r["label"] is not None}
    xs, y = [], []
    for k, shard in enumerate(index["shards"]):  # the labelled files' embeddings, shard by shard
        docs = shard_docs(out, shard)
        rows = [i for i, d in enumerate(docs) if d["hash"] in labels]
        if rows:
            xs.append(read_embeddings(out, k)[rows])
            y += [labels[docs[i]["hash"]] for i in rows]
    if not y:
        raise UserError("no usable labels for this corpus: run the annotate stage first")
    embedder = joblib.load(out / "embedder.joblib")["embedder"]
    t0 = time.time()
    clf, m, held_out = fit_forest(np.concatenate(xs), y, a.n_estimators, a.test_fraction, a.seed)
    m["fit_seconds"] = round(time.time() - t0, 2)
    judge = records[0]["judge"]
    bundle = {"forest": clf, "id": uuid.uuid4().hex, "embedder": embedder, "judge": judge,
              "sklearn_version": sklearn.__version__, "metrics": m, "held_out": held_out}
    atomic_write(out / "forest.joblib", lambda f: joblib.dump(bundle, f))
    atomic_write(out / "metrics.json", json.dumps(m, indent=2))
    print(f"fit: random forest ({a.n_estimators} trees) on {m['n_train']} labels from {judge}: "
          f"{forest_summary(m)} -> {out / 'forest.joblib'}, {out / 'metrics.json'}")
    save_stats(out, "fit", m)
    return clf


# ------------------------------------------------------------------------------------------------
# 5. Apply: every shard scored by the rank that owns it, then the kept files in corpus order

def stage_apply(a):
    """Score every file (all ranks), then, on rank 0, keep those at or above the forest's held-out
    threshold (or --threshold, or the top --keep_fraction) and write filtered.jsonl in corpus
    order, streaming the shards, and the report."""
    out, index = Path(a.out_dir), corpus_index(a.out_dir)
    bundle = load_forest(a.forest or out / "forest.joblib")
    t0 = time.time()
    score_shards(out, index, bundle)
    seconds = time.time() - t0
    if rank_and_world()[0] != 0:
        return
    n = index["docs"]
    scores = np.fromiter((r["score"] for r in read_scores(out, index)), np.float32, n)  # 4 B each
    threshold = bundle["metrics"]["threshold"] if a.threshold is None else a.threshold
    keep = np.zeros(len(scores), bool)
    keep[select(scores, threshold, a.keep_fraction)] = True
    if a.keep_fraction is not None:  # the cut it made, as a threshold: the lowest score kept
        threshold = float(scores[keep].min()) if keep.any() else 1.0
    rule = (f"--keep_fraction={a.keep_fraction}" if a.keep_fraction is not None else "--threshold"
            if a.threshold is not None else "the held-out threshold")
    held_out = {**bundle["metrics"], **held_out_metrics(*bundle["held_out"], threshold)}
    order = np.argsort(-scores, kind="stable")
    extremes = {int(i): None for i in (*order[:3], *order[::-1][:3])}  # the best and worst files
    kept = tokens = tokens_kept = 0

    def kept_records():
        nonlocal kept, tokens, tokens_kept
        docs = (d for shard in index["shards"] for d in shard_docs(out, shard))
        for i, (d, r) in enumerate(zip(docs, read_scores(out, index))):
            tokens += r["tokens"]
            if i in extremes:
                head = [ln.strip()[:100] for ln in d["text"].splitlines() if ln.strip()][:2]
                extremes[i] = (r["score"], d["id"], " | ".join(head))
            if keep[i]:
                kept, tokens_kept = kept + 1, tokens_kept + r["tokens"]
                yield dict(text=d["text"], score=r["score"], source=d["source"], id=d["id"])

    atomic_write(out / "filtered.jsonl", jsonl_writer(kept_records()))
    save_stats(out, "apply", {"files": n, "kept": kept, "tokens": tokens,
                              "tokens_kept": tokens_kept, "rule": rule, "held_out": held_out,
                              "score_seconds": round(seconds, 3),
                              "score_files_per_s": round(n / max(seconds, 1e-9), 1)})
    report = make_report(out, index, scores, bundle, [extremes[int(i)] for i in order[:3]],
                         [extremes[int(i)] for i in order[::-1][:3]])
    atomic_write(out / "report.txt", report + "\n")
    print(report)
    print(f"\nfilter.py: wrote {out / 'filtered.jsonl'} ({kept:,} of {n:,} files; train.py reads "
          f"it), report {out / 'report.txt'}, every file's score in {out / 'scores'}/")


def score_shards(out, index, bundle):
    """Write scores/k.jsonl ({"id", "hash", "score", "tokens"}) for this rank's shards that have
    none for this forest; the tokens are phi-1's, the ones train.py will see."""
    rank, world = rank_and_world()
    scores = out / "scores"
    if rank == 0:
        stamp, this = scores / "forest.json", {"forest": bundle["id"], "corpus": index["digest"]}
        if not stamp.exists() or json.loads(stamp.read_text()) != this:
            shutil.rmtree(scores, ignore_errors=True)  # another forest's or corpus's scores
            atomic_write(stamp, json.dumps(this))
        remove_torn_writes(scores)  # the other ranks wait at the barrier below
    barrier()
    saved = out / "embedder.joblib"  # a forest from elsewhere embeds with its own embedder
    own = saved.exists() and joblib.load(saved)["embedder"].id == bundle["embedder"].id
    if not own and rank == 0:
        print(f"apply: embedding with the forest's embedder {bundle['embedder'].name}")
    # one thread: scikit-learn sums the trees' probabilities in the order threads finish, which
    # would make the last bits of a score (and so a file at the threshold) depend on the run
    clf = bundle["forest"].set_params(n_jobs=1)
    todo = [k for k in range(rank, len(index["shards"]), world)
            if not shard_path(out, "scores", k, ".jsonl").exists()]
    progress = Progress("scored", sum(index["shards"][k]["docs"] for k in todo))
    for k in todo:
        docs = shard_docs(out, index["shards"][k])
        texts = [d["text"] for d in docs]
        x = read_embeddings(out, k) if own else bundle["embedder"].transform(texts)
        p = clf.predict_proba(x)[:, list(clf.classes_).index(1)]
        atomic_write(shard_path(out, "scores", k, ".jsonl"), jsonl_writer(
            {"id": d["id"], "hash": d["hash"], "score": round(float(s), 4), "tokens": n}
            for d, s, n in zip(docs, p, map(len, phi1_tokens(texts)))))
        progress.update(len(docs))
    barrier()


def read_scores(out_dir, index):
    """Every file's score record, in corpus order, a shard at a time."""
    for k in range(len(index["shards"])):
        yield from (r for _, r in read_jsonl(shard_path(out_dir, "scores", k, ".jsonl")))


# ------------------------------------------------------------------------------------------------
# The report: what was judged, how well the forest learned it, what was kept, how fast

def make_report(out, index, scores, bundle, best, worst):
    s = json.loads((out / "stats.json").read_text())
    load, ann, emb, app = (s.get(k, {}) for k in ("load", "annotate", "embed", "apply"))
    n, judge, features = len(scores), bundle["judge"], bundle["embedder"].name
    embedded, scored = (len(list((out / d).glob(g))) for d, g in (("embeddings", "*.npy"),
                                                                   ("scores", "*.jsonl")))
    lines = [
        "phi-1 quality filter report (§2.1)",
        f"input: {index['input']}: {n:,} files loaded (skipped: "
        f"{describe(index['skipped']) or 'none'})",
        f"judge: {judge}" + ("  <- STAND-IN heuristic, not an LLM" if "stand-in" in judge else "")
        + (f"; {ann['labelled']} usable labels ({ann['positive']} positive), "
           f"{ann.get('unparseable', 0)} unparseable, {ann.get('failed', 0)} failed"
           if ann else ""),
        f"features: {features}"
        + ("  <- STAND-IN for code-model embeddings" if "stand-in" in features else ""),
        f"forest: {forest_summary(app['held_out'])}",
        f"kept (score >= {app['held_out']['threshold']}, {app['rule']}): {app['kept']:,} of "
        f"{n:,} files ({app['kept'] / n:.1%}), {app['tokens_kept']:,} of {app['tokens']:,} "
        f"tokens ({app['tokens_kept'] / max(app['tokens'], 1):.1%})",
        f"shards: {len(index['shards'])} of up to {max(sh['docs'] for sh in index['shards']):,} "
        f"files; embedded {embedded}, scored {scored}",
        "score histogram (files):", histogram(scores)]
    for title, files in (("highest scored:", best), ("lowest scored:", worst)):
        lines += [title] + [f"  {score:.3f} {doc_id}: {head}" for score, doc_id, head in files]
    lines.append(f"performance (on {emb.get('machine', 'an unrecorded machine')}):")
    if load:
        rate = load["loaded"] / max(load["seconds"], 1e-9)
        lines.append(f"  load: {rate:,.0f} files/s ({load['seconds']} s)")
    if ann.get("labels_per_s"):
        lines.append(f"  annotate ({ann['judge']}): {ann['labels_per_s']} labels/s at "
                     f"concurrency {ann.get('concurrency', 1)}")
    if emb:
        per = f" per process, {emb['world']} processes" if emb.get("world", 1) > 1 else ""
        lines.append(f"  embed ({emb['embedder']}): {emb['files_per_s']:,} files/s, "
                     f"{emb['tokens_per_s']:,} tokens/s{per} ({emb['files']:,} files, "
                     f"{emb['seconds']} s)")
    lines.append(f"  score (forest, and phi-1 tokens for the counts): "
                 f"{app['score_files_per_s']:,} files/s")
    if "started" in s.get("all", {}):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(f"  all five stages: {time.time() - s['all']['started']:.0f} s wall time, "
                     f"peak RSS {rss:,.0f} MB")
    return "\n".join(lines)


def histogram(scores, bins=10, width=50):
    counts, edges = np.histogram(scores, bins=bins, range=(0.0, 1.0))
    top = max(counts.max(), 1)
    return "\n".join(f"  {lo:.1f}-{hi:.1f} {'#' * round(width * c / top):<{width}} {c}"
                     for lo, hi, c in zip(edges[:-1], edges[1:], counts))


def stage_all(a):
    t0 = time.time()
    stage_load(a)
    stage_annotate(a)
    if a.dry_run:
        return
    stage_embed(a)
    stage_fit(a)
    save_stats(a.out_dir, "all", {"started": t0})  # for the report's total wall time
    stage_apply(a)
    print(f"filter.py: all stages in {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------
# Command line: `python filter.py [STAGE] --key=value ...`; flags alone mean `all`

COMMON_OPTIONS = {
    "out_dir": ("out-filter", "where every stage reads and writes"),
    "seed": (SEED, "seed of the labelled sample, the stand-in's fit sample, split and forest"),
    "labels": (None, "the label cache (default OUT_DIR/labels.jsonl)", str),
}
STAGE_OPTIONS = {
    "load": {
        "input": ("stdlib", "comma-separated sources as train.py reads them (directories, .py, "
                            "JSONL, .jsonl.gz, Parquet); stdlib: this Python's, without its tests"),
        "text_column": ("", "the records' text field (default: text in JSONL, content in Parquet)"),
        "max_bytes": (MAX_BYTES, "skip larger files"),
        "shard_docs": (SHARD_DOCS, "documents per corpus shard"),
    },
    "annotate": {
        "base_url": (None, "OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1; without it a "
                           "heuristic stands in for the LLM judge", str),
        "model": (None, "the model to ask for (the API key comes from OPENAI_API_KEY)", str),
        "n_annotate": (N_ANNOTATE, "random sample of files to label"),
        "concurrency": (8, "LLM requests in flight at once"),
        "timeout": (60.0, "seconds an LLM request may take before it is retried"),
        "max_retries": (6, "retries of a failed LLM request (429, 5xx, timeout), with backoff"),
        "max_prompt_chars": (MAX_PROMPT_CHARS, "a file is cut to this many characters"),
        "logprobs": (True, "False: don't ask for logprobs (for servers that refuse them)"),
        "dry_run": (False, "True: only print the requests and tokens annotating would send"),
    },
    "embed": {
        "embed_ckpt": (None, "train.py checkpoint or HF Phi directory (else TF-IDF stand-in)", str),
        "device": (None, "default: cuda if available, else cpu", str),
        "embed_max_tokens": (EMBED_MAX_TOKENS, "tokens of each file the model embeds"),
        "embed_batch_tokens": (EMBED_BATCH_TOKENS, "padded tokens per embedding batch"),
    },
    "fit": {
        "n_estimators": (N_TREES, "trees in the random forest"),
        "test_fraction": (TEST_FRACTION, "held-out share of the labels: the threshold and metrics"),
    },
    "apply": {
        "threshold": (None, "keep files scored >= this (default: fit's held-out cut) ...", float),
        "keep_fraction": (None, "... or this top fraction of files by score", float),
        "forest": (None, "a saved forest.joblib (default OUT_DIR/forest.joblib)", str),
    },
}
STAGES = dict(load=stage_load, annotate=stage_annotate, embed=stage_embed, fit=stage_fit,
              apply=stage_apply, all=stage_all)


def check_cut(a):
    """--threshold or --keep_fraction (or neither: the forest's held-out threshold), checked."""
    threshold, keep_fraction = getattr(a, "threshold", None), getattr(a, "keep_fraction", None)
    if threshold is not None and keep_fraction is not None:
        raise UserError("--threshold and --keep_fraction both draw the line: give one of them")
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise UserError(f"--keep_fraction={keep_fraction}: must be in (0, 1]")


def parse_args(argv):
    """(stage name, its settings) from the command line; bad input is a UserError."""
    if argv[:1] in (["-h"], ["--help"]):  # the docstring, which lists the stages first
        print(__doc__.strip())
        sys.exit(0)
    command, rest = configurator.pick_command(argv, STAGES, __doc__, default="all")
    stages = STAGE_OPTIONS if command == "all" else [command]
    options = {**COMMON_OPTIONS, **{k: v for s in stages for k, v in STAGE_OPTIONS[s].items()}}
    check_cut(a := configurator.parse(rest, options, __doc__))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and command not in ("embed", "apply"):
        raise UserError(f"under torchrun only `embed` and `apply` run (on every rank); run "
                        f"`{command}` in one process")
    return command, a


def main(argv):
    command, a = parse_args(argv)
    try:
        STAGES[command](a)
    except KeyboardInterrupt:
        kept = "everything written so far is kept: run the same command again to resume"
        raise KeyboardInterrupt(kept) from None


if __name__ == "__main__":
    import filter  # run as the module `filter`, so the saved embedder and forest unpickle anywhere
    configurator.cli(filter.main)
