"""Tests for model.py and what surrounds it: the CodeGen tokenizer (tokenizer.py), parameter counts,
equivalence with Hugging Face's PhiForCausalLM and CodeGenForCausalLM (weights.py), generation with
the KV cache, and the sampling command line (sample.py)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from model import Phi, PhiConfig, attention, attention_reference, document_mask, sample_next_token
from weights import from_pretrained, load_model, save_pretrained
from tokenizer import EOT, Tokenizer, get_tokenizer

# ---------------------------------------------------------------------------- tokenizer

VECTORS = [
    ("def f(x):\n        return x", [4299, 277, 7, 87, 2599, 198, 50280, 7783, 2124]),
    ("a" + " " * 40 + "b", [64, 50257, 50279, 65]),
    ("a" + " " * 32 + "b", [64, 50257, 275]),
    ("\t\tx", [50294, 87]),
    ("x = 1  # two spaces", [87, 796, 352, 50286, 2, 734, 9029]),
]


@pytest.mark.parametrize("text,ids", VECTORS)
def test_tokenizer_vectors(text, ids):
    tok = get_tokenizer()
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_whitespace_tokens_are_codegens_ids():
    tok = get_tokenizer()
    assert tok.encode(" " * 31) == [50257] and tok.encode("  ") == [50286]
    assert tok.encode("\t" * 9) == [50287] and tok.encode("\t\t") == [50294]
    assert tok.n_vocab == 50295
    # 8 spaces are one token, not four 2-space tokens as tiktoken's own special-token matching would give
    assert tok.encode(" " * 8) == [50280]


@pytest.mark.parametrize("text", ["", "plain", "tabs\t\t\tand\tspaces   x", "crlf\r\nline\r\n", "ünïcødé ✓ 日本語 🐍",
                                  " " * 100 + "\t" * 20 + "\n" * 5, "x" * 3 + "    " * 9 + "\t \t  \t"])
def test_round_trip(text):
    tok = get_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_endoftext_is_plain_text_unless_allowed():
    tok = get_tokenizer()
    text = "a<|endoftext|>b"
    assert EOT not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text, allow_eot=True) == tok.encode("a") + [EOT] + tok.encode("b")


def test_encode_batch_matches_encode_with_processes():
    tok = get_tokenizer()
    texts = [f"def f{i}(x):\n    return x * {i}  # {'y' * i}\n" * 400 for i in range(60)]  # > 1 MB: uses the pool
    assert sum(map(len, texts)) > 1_000_000
    assert tok.encode_batch(texts, num_workers=2) == [tok.encode(t) for t in texts]


def test_rank_file_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="rank file not found"):
        Tokenizer(tmp_path / "missing.tiktoken")
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(b"IQ== 0\n")
    with pytest.raises(ValueError, match="sha256"):
        Tokenizer(bad)

# ---------------------------------------------------------------------------- shapes and counts


def test_parameter_counts():
    with torch.device("meta"):
        phi1 = Phi(PhiConfig.from_preset("phi-1"))
        small = Phi(PhiConfig.from_preset("phi-1-small"))
    assert abs(phi1.get_num_params() - 1.418e9) < 0.001e9
    assert abs(small.get_num_params() - 357e6) < 1e6


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset"):
        PhiConfig.from_preset("phi-2")
    with pytest.raises(ValueError, match="rotary_dim"):
        PhiConfig.from_preset("nano", rotary_dim=32)


def test_forward_loss_and_ignore_index():
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano")).eval()
    idx = torch.randint(0, 50000, (2, 16))
    logits, loss = model(idx)
    assert logits.shape == (2, 16, 51200) and loss is None
    targets = torch.randint(0, 50000, (2, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - torch.log(torch.tensor(51200.0)).item()) < 0.5  # near uniform at init
    partial = targets.clone()
    partial[:, :8] = -1
    _, loss_half = model(idx, partial)
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 51200), targets[:, 8:].reshape(-1))
    assert torch.allclose(loss_half, expected, atol=1e-5)


def test_sdpa_path_matches_math_reference_with_document_masks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 16) for _ in range(3))
    doc_ids = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.allclose(attention(q, k, v), attention_reference(q, k, v, causal), atol=1e-5)
    masked = attention(q, k, v, doc_ids=doc_ids)
    assert torch.allclose(masked, attention_reference(q, k, v, document_mask(doc_ids)), atol=1e-5)
    # the second document of row 0 does not see the first: same output as attending to it alone
    alone = attention(q[:1, :, 4:], k[:1, :, 4:], v[:1, :, 4:])
    assert torch.allclose(masked[:1, :, 4:], alone, atol=1e-5)


def test_mfu_uses_the_gpu_table():
    model = Phi(PhiConfig.from_preset("nano"))
    assert model.estimate_mfu(1000.0, "cpu") is None
    a100, h100 = model.estimate_mfu(1000.0, "NVIDIA A100-SXM4-80GB"), model.estimate_mfu(1000.0, "NVIDIA H100 80GB HBM3")
    assert a100 == pytest.approx(1000.0 * model.flops_per_token() / 312e12)
    assert a100 / h100 == pytest.approx(989 / 312)

# ---------------------------------------------------------------------------- Hugging Face format


def _hf_tiny():
    from transformers import PhiConfig as HFPhiConfig, PhiForCausalLM
    torch.manual_seed(0)
    cfg = HFPhiConfig(vocab_size=51200, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, partial_rotary_factor=0.5,
                      resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    model = PhiForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to constants; randomise them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_hf_checkpoint_loads_with_same_logits(tmp_path):
    hf = _hf_tiny()
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path).eval()
    assert ours.config.rotary_dim == 8
    idx = torch.randint(0, 50295, (2, 33))
    with torch.no_grad():
        ref = hf(idx).logits
        got, _ = ours(idx)
    assert (got - ref).abs().max().item() < 1e-4


def test_our_save_loads_into_transformers(tmp_path):
    from transformers import PhiForCausalLM
    torch.manual_seed(1)
    ours = Phi(PhiConfig.from_preset("nano")).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_pretrained(ours, tmp_path)
    hf = PhiForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50295, (2, 40))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() < 1e-4
    # and back through our own loader, from the directory and via load_model
    assert torch.equal(load_model(tmp_path)(idx)[0], ours(idx)[0])


def test_pytorch_model_bin_and_missing_weights(tmp_path):
    from safetensors.torch import load_file
    hf = _hf_tiny()
    hf.save_pretrained(tmp_path)  # current transformers writes only safetensors: convert to the older format
    torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    idx = torch.randint(0, 50295, (1, 9))
    with torch.no_grad():
        assert (from_pretrained(tmp_path)(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path)


def test_load_model_from_train_checkpoint(tmp_path):
    from dataclasses import asdict
    model = Phi(PhiConfig.from_preset("nano"))
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "step": 3}, tmp_path / "ckpt.pt")
    idx = torch.randint(0, 50295, (1, 7))
    assert torch.equal(load_model(tmp_path)(idx)[0], model.eval()(idx)[0])
    shutil.rmtree(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a train.py checkpoint"):
        load_model(tmp_path)

# ---------------------------------------------------------------------------- CodeGen (codegen-350M-mono's format)


def _codegen_tiny(directory, n_embd, n_head, rotary_dim, seed=0):
    """A random CodeGenForCausalLM saved to directory; biases and LayerNorms randomised so the conversion is tested."""
    from transformers import CodeGenConfig, CodeGenForCausalLM
    torch.manual_seed(seed)
    cfg = CodeGenConfig(vocab_size=51200, n_positions=128, n_ctx=128, n_embd=n_embd, n_layer=2, n_head=n_head,
                        rotary_dim=rotary_dim, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = CodeGenForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    return model


# (width, heads, rotary dims): 32 of 64 per head as in codegen-350M-mono; 8 of 32; rotary over the whole head
@pytest.mark.parametrize("n_embd,n_head,rotary_dim", [(256, 4, 32), (256, 8, 8), (128, 8, 16)])
def test_codegen_checkpoint_loads_with_same_logits(tmp_path, n_embd, n_head, rotary_dim):
    hf = _codegen_tiny(tmp_path, n_embd, n_head, rotary_dim)
    ours = load_model(tmp_path)
    assert (ours.config.n_embd, ours.config.n_head, ours.config.rotary_dim) == (n_embd, n_head, rotary_dim)
    idx = torch.randint(0, 50295, (2, 45))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
        # and generation through our KV cache follows CodeGen's own greedy choices
        ref = hf.generate(idx[:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=6,
                          min_new_tokens=6, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert ours.generate([idx[0, :5].tolist()], max_new_tokens=6, eos_token_id=None) == [ref]


def test_codegen_unsupported_variant_is_a_clear_error(tmp_path):
    import json
    _codegen_tiny(tmp_path, 128, 8, 16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_head": 6, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="unsupported CodeGen variant: activation_function='relu', n_head=6"):
        from_pretrained(tmp_path)


def test_codegen_directory_runs_through_eval_sample_and_filter_embedding(tmp_path):
    import json
    import eval as E
    import filter
    hf = _codegen_tiny(tmp_path / "codegen", 128, 8, 16)
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"task_id": "T/0", "prompt": "def f(x):\n    return", "entry_point": "f",
                                    "canonical_solution": " x\n", "test": "def check(f):\n    assert f(1) == 1\n"}))
    out = tmp_path / "samples.jsonl"
    E.main(["sample", f"--ckpt={tmp_path / 'codegen'}", f"--problems={problems}",
            "--max_new_tokens=4", "--device=cpu", f"--out={out}"])
    assert json.loads(out.read_text())["task_id"] == "T/0"
    # the filter's features: CodeGen's final hidden states (after ln_f) mean-pooled over each file's tokens
    texts = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"]
    emb = filter.ModelEmbedder(tmp_path / "codegen", device="cpu").transform(texts)
    tok = get_tokenizer()
    with torch.no_grad():
        ref = [hf.transformer(torch.tensor([tok.encode(t)])).last_hidden_state[0].mean(0).numpy() for t in texts]
    assert emb.shape == (2, 128) and abs(emb - ref).max() < 1e-4

# ---------------------------------------------------------------------------- generation


def _trained_ish_model():
    # random weights give near-uniform logits; scale up the head so greedy choices are well separated from ties
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano")).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def _greedy_without_cache(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids], device=model.lm_head.weight.device))
        ids.append(sample_next_token(logits[:, -1], 0.0, None, None, None).item())
    return ids[-n:]


def test_cached_greedy_equals_recomputing_every_step():
    model = _trained_ish_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [100, 200], [3000, 3001, 3002, 3003]]
    out = model.generate(prompts, max_new_tokens=20, eos_token_id=None)
    for p, o in zip(prompts, out):
        assert o == _greedy_without_cache(model, p, 20)


def test_batched_generation_equals_one_by_one():
    model = _trained_ish_model()
    prompts = [[11, 12, 13, 14, 15, 16, 17, 18, 19], [42], [7, 8, 9]]
    batched = model.generate(prompts, max_new_tokens=12, eos_token_id=None)
    for p, o in zip(prompts, batched):
        assert model.generate([p], max_new_tokens=12, eos_token_id=None)[0] == o


def test_sampling_is_seeded_and_respects_top_k():
    model = _trained_ish_model()
    a = model.generate([[1, 2, 3]] * 4, max_new_tokens=10, temperature=1.0, top_k=5, seed=123, eos_token_id=None)
    b = model.generate([[1, 2, 3]] * 4, max_new_tokens=10, temperature=1.0, top_k=5, seed=123, eos_token_id=None)
    c = model.generate([[1, 2, 3]] * 4, max_new_tokens=10, temperature=1.0, top_k=5, seed=7, eos_token_id=None)
    assert a == b and a != c
    logits = torch.randn(3, 51200)
    allowed = logits.topk(5, dim=-1).indices
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = sample_next_token(logits, 1.0, 5, None, gen)
        assert all(t[i] in allowed[i] for i in range(3))


def test_top_p_keeps_the_smallest_set_with_that_mass():
    logits = torch.full((1, 51200), -1e9)
    logits[0, :4] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    gen = torch.Generator().manual_seed(0)
    seen = {sample_next_token(logits.clone(), 1.0, None, 0.7, gen).item() for _ in range(50)}
    assert seen == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert sample_next_token(logits.clone(), 0.0, None, None, None).item() == 0


def test_stop_strings_and_eos_end_a_row():
    model = _trained_ish_model()
    tok = get_tokenizer()
    free = model.generate([[1, 2, 3]], max_new_tokens=30, eos_token_id=None)[0]
    text = tok.decode(free)
    stop = text[8:11]  # a stop string that greedy decoding is known to produce
    cut = model.generate([[1, 2, 3]], max_new_tokens=30, stop=[stop], eos_token_id=None)[0]
    assert tok.decode(cut) == text[:text.find(stop)]
    eos = free[5]
    ended = model.generate([[1, 2, 3]], max_new_tokens=30, eos_token_id=eos)[0]
    assert ended == free[:free.index(eos)]


def test_generation_under_bf16_autocast_over_fp32_weights():
    """A bf16 training run samples with fp32 master weights under autocast: the KV cache holds what the
    projections produce (bf16), not the weights' dtype."""
    model = _trained_ish_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate([[5, 6, 7], [8]], max_new_tokens=6, temperature=0.8, seed=1, eos_token_id=None)
    assert [len(o) for o in out] == [6, 6] and model.lm_head.weight.dtype == torch.float32


def test_generate_without_a_seed_leaves_the_global_rngs_alone():
    """Dropout's stream (the global RNG) is what an exact resume restores: sampling must not reseed it."""
    model = _trained_ish_model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = model.generate([[1, 2, 3]], max_new_tokens=4, temperature=1.0, eos_token_id=None)  # seed=None
    assert torch.equal(torch.rand(3), expected) and len(a[0]) == 4


def test_attention_is_a_choice_of_kernel_not_of_weights():
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    x = torch.randint(0, 1000, (2, 17))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    auto = model(x[:, :-1], x[:, 1:])[1]
    sdpa = model.set_attention("sdpa")(x[:, :-1], x[:, 1:])[1]  # on a CPU both are SDPA
    assert torch.equal(auto, sdpa) and all(layer.self_attn.kind == "sdpa" for layer in model.layers)
    assert model.state_dict().keys() == state.keys()  # nothing added to what a checkpoint holds
    with pytest.raises(ValueError, match="attention=triton needs a CUDA GPU"):
        model.set_attention("triton")
    with pytest.raises(ValueError, match="choose one of auto, triton, sdpa"):
        model.set_attention("flash")


def test_generate_rejects_bad_lengths():
    model = _trained_ish_model()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.generate([[1] * 100], max_new_tokens=100)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[]])

# ---------------------------------------------------------------------------- GPU only (skipped without CUDA)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_attention_runs_the_triton_kernel_and_matches_the_reference():
    import warnings
    q, k, v = (torch.randn(2, 4, 100, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    doc_ids = torch.tensor([[0] * 30 + [1] * 70] * 2, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # falling back to SDPA warns, and would fail here
        out = attention(q, k, v, doc_ids=doc_ids)
    ref = attention_reference(q.double(), k.double(), v.double(), document_mask(doc_ids))
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@needs_cuda
def test_cuda_triton_and_sdpa_attention_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("tiny")).cuda()
    x = torch.randint(0, 1000, (2, 129), device="cuda")
    results = []
    for kind in ("triton", "sdpa"):
        model.set_attention(kind).zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        results.append((loss.item(), model.layers[0].self_attn.qkv_proj.weight.grad.clone()))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) < 1e-2 * l2 and ((g1 - g2).norm() / g2.norm()).item() < 5e-2


@needs_cuda
@pytest.mark.filterwarnings("ignore:Triton FlashAttention does not support")
def test_cuda_graph_decoding_equals_recomputing_every_step():
    model = _trained_ish_model().cuda()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [100, 200]]
    out = model.generate(prompts, max_new_tokens=16, eos_token_id=None)  # decode steps replay a CUDA graph
    for p, o in zip(prompts, out):
        assert o == _greedy_without_cache(model, p, 16)


@needs_cuda
def test_cuda_compiled_model_is_one_graph_through_the_kernel():
    """torch.compile(fullgraph=True) fails on any graph break: with the Triton kernel as custom ops the whole model,
    documents and attention dropout included, is one graph; compiled and eager agree, and the backward runs."""
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("tiny", attn_pdrop=0.1)).cuda().to(torch.bfloat16)
    x = torch.randint(0, 1000, (2, 129), device="cuda")
    doc_ids = (torch.arange(128, device="cuda") // 40).expand(2, 128)  # (B, T)
    loss = lambda: model(x[:, :-1], x[:, 1:], doc_ids)[1]
    compiled = torch.compile(loss, fullgraph=True)
    model.eval()  # no dropout: the same function both ways
    assert abs(compiled().item() - loss().item()) < 2e-2 * loss().item()
    model.train()
    compiled().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())

# ---------------------------------------------------------------------------- python sample.py (sampling CLI)

SAMPLE_PY = Path(__file__).resolve().parent.parent / "sample.py"


def test_sampling_cli_reads_any_checkpoint_and_a_prompt_file(tmp_path, capsys):
    from dataclasses import asdict
    tok = get_tokenizer()
    nano = _trained_ish_model()
    torch.save({"model": nano.state_dict(), "model_args": asdict(nano.config)}, tmp_path / "ckpt.pt")
    codegen = _codegen_tiny(tmp_path / "codegen", 128, 8, 16)
    (tmp_path / "prompt.txt").write_text("def fib(n):\n")
    ids = tok.encode("def fib(n):\n")
    args = [f"--prompt=FILE:{tmp_path / 'prompt.txt'}", "--max_new_tokens=8", "--temperature=0"]
    greedy = nano.generate([ids], max_new_tokens=8, temperature=0.0)[0]
    expected = "def fib(n):\n" + tok.decode(greedy)
    # the command itself, on train.py's checkpoint
    proc = subprocess.run([sys.executable, str(SAMPLE_PY), f"--ckpt={tmp_path}", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == expected + "\n", proc.stderr
    # its main(), in this process, on the CodeGen directory
    sample.main([f"--ckpt={tmp_path / 'codegen'}", *args])
    model = load_model(tmp_path / "codegen")
    greedy = model.generate([ids], max_new_tokens=8, temperature=0.0)[0]
    assert capsys.readouterr().out == "def fib(n):\n" + tok.decode(greedy) + "\n"
    with torch.no_grad():  # the CodeGen sample is CodeGen's own greedy continuation
        ref = codegen.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=0,
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               eos_token_id=EOT)[0, len(ids):]
    sample.main([f"--ckpt={tmp_path / 'codegen'}", "--prompt=def fib(n):\n", "--max_new_tokens=5",
                 "--temperature=0"])
    ref_text = tok.decode([t for t in ref.tolist() if t != EOT])
    assert capsys.readouterr().out.startswith("def fib(n):\n" + ref_text)


@pytest.mark.parametrize("flag,message", [
    ("--temprature=0.8", "unknown key 'temprature' in the command line; did you mean "
                         "--temperature?"),
    ("--ckpt", "expected --key=value, got '--ckpt'"),
    ("extra", "unexpected argument 'extra'"),
    ("--ckpt=missing_dir", "missing_dir is neither a train.py checkpoint"),
    ("--prompt=FILE:missing.txt", "--prompt=FILE:missing.txt: No such file or directory"),
    ("--top_k=-1", "--top_k >= 0"),
])
def test_sampling_cli_bad_input_is_one_line_and_exit_2(tmp_path, flag, message):
    proc = subprocess.run([sys.executable, str(SAMPLE_PY), flag], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("sample.py: error: ") and message in proc.stderr, proc.stderr
