"""
Model weights in the three formats phi-1 meets: train.py's checkpoints, Hugging Face PhiForCausalLM
(how the official microsoft/phi-1 weights ship) and CodeGenForCausalLM (codegen-350M-mono: the
paper's baseline, and the embedder of §2.1's filter), converted to and from model.py's Phi.

    from weights import load_model, save_pretrained
    model = load_model("out")         # a train.py out_dir or ckpt file, or a Hugging Face directory
    save_pretrained(model, "phi-hf")  # loads in transformers' PhiForCausalLM.from_pretrained
"""

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configurator import UserError
from model import Phi, PhiConfig
from tokenizer import EOT

def config_from_hf(hf):
    """Hugging Face PhiConfig dict -> PhiConfig; refuses variants this model does not implement."""
    # transformers 5 nests rope settings here; older files keep them on top
    rope = hf.get("rope_parameters") or {}
    factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    unsupported = {"hidden_act": (hf.get("hidden_act", "gelu_new")
                                  not in ("gelu_new", "gelu_pytorch_tanh")),
                   "qk_layernorm": hf.get("qk_layernorm", False),
                   "tie_word_embeddings": hf.get("tie_word_embeddings", False),
                   "num_key_value_heads": (hf.get("num_key_value_heads")
                                           not in (None, hf["num_attention_heads"])),
                   "rope_type": rope.get("rope_type", "default") != "default"}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError("unsupported Phi variant: "
                         f"{', '.join(f'{k}={hf.get(k, rope.get(k))!r}' for k in bad)}")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    return PhiConfig(block_size=hf.get("max_position_embeddings", 2048),
                     vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"],
                     n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                     n_inner=hf["intermediate_size"], rotary_dim=int(head_dim * factor),
                     rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                     layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
                     embd_pdrop=hf.get("embd_pdrop", 0.0),
                     attn_pdrop=hf.get("attention_dropout", 0.0),
                     resid_pdrop=hf.get("resid_pdrop", 0.0))


def config_to_hf(c, dtype=torch.float32):
    return {"architectures": ["PhiForCausalLM"], "model_type": "phi", "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.n_inner, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head,
            "max_position_embeddings": c.block_size, "hidden_act": "gelu_new",
            "layer_norm_eps": c.layer_norm_eps,
            "partial_rotary_factor": c.rotary_dim / (c.n_embd // c.n_head),
            "rope_theta": c.rope_theta, "resid_pdrop": c.resid_pdrop, "embd_pdrop": c.embd_pdrop,
            "attention_dropout": c.attn_pdrop, "initializer_range": 0.02,
            "tie_word_embeddings": False, "qk_layernorm": False, "bos_token_id": None,
            "eos_token_id": EOT, "torch_dtype": str(dtype).removeprefix("torch.")}


def read_hf_weights(directory):
    directory = Path(directory)
    if (directory / "model.safetensors").exists():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "model.safetensors.index.json").exists():  # sharded checkpoints
        shards = set(json.loads((directory / "model.safetensors.index.json").read_text())
                     ["weight_map"].values())
        return {k: v for shard in sorted(shards)
                for k, v in load_file(str(directory / shard)).items()}
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")


def state_dict_from_hf(hf):
    """HF key names -> ours: drop the 'model.' prefix and fuse q_proj/k_proj/v_proj into
    qkv_proj."""
    sd = {}
    for key, value in hf.items():
        key = key.removeprefix("model.")
        if ".self_attn.q_proj." in key:
            kind = key.rsplit(".", 1)[1]  # weight or bias
            prefix = key.split(".self_attn.")[0] + ".self_attn."
            sd[prefix + "qkv_proj." + kind] = torch.cat([hf["model." + prefix + p + "_proj." + kind]
                                                         for p in "qkv"])
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            sd[key] = value
    return sd


def state_dict_to_hf(sd, config):
    hf = {}
    for key, value in sd.items():
        if ".qkv_proj." in key:
            for name, part in zip("qkv", value.split(config.n_embd)):
                hf["model." + key.replace("qkv_proj", name + "_proj")] = part
        else:
            hf[key if key.startswith("lm_head.") else "model." + key] = value
    return hf


# CodeGen (Nijkamp et al., 2022), whose tokenizer phi-1 uses and whose embeddings the paper's filter
# reads, has phi-1-small's shape and the same parallel block, x + attn(ln(x)) + mlp(ln(x)). Three
# differences, converted on load:
# - q, k and v come from one fused matrix whose rows are cut into mp_num = 4 chunks (CodeGen was
#   trained on 4-way model-parallel TPUs), each chunk holding the rows of its quarter of the heads
#   as q, then v, then k;
# - rotary turns interleaved pairs (dims 2i and 2i + 1, GPT-J's rotate_every_two) where ours turns
#   dims i and i + R/2 (rotate_half), both at frequency i: moving each head's even rotary rows of q
#   and k first and the odd ones after makes our rotation compute the same rotated vectors, permuted
#   alike in q and k, so q . k is unchanged (v is never rotated, so its rows stay);
# - the attention projections have no biases: ours are zero (and remain trainable).
CODEGEN_MP_NUM = 4


def config_from_codegen(hf):
    """Hugging Face CodeGenConfig dict -> PhiConfig; refuses variants this conversion does not
    cover."""
    unsupported = {"activation_function": (hf.get("activation_function", "gelu_new")
                                           not in ("gelu_new", "gelu_pytorch_tanh")),
                   "rotary_dim": hf.get("rotary_dim") is None,
                   "n_head": hf["n_head"] % CODEGEN_MP_NUM != 0}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError("unsupported CodeGen variant: "
                         f"{', '.join(f'{k}={hf.get(k)!r}' for k in bad)}")
    return PhiConfig(block_size=hf.get("n_positions", 2048), vocab_size=hf["vocab_size"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     n_inner=hf.get("n_inner") or 4 * hf["n_embd"], rotary_dim=hf["rotary_dim"],
                     rope_theta=10000.0,  # CodeGen's base is fixed at 10000
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                     embd_pdrop=hf.get("embd_pdrop", 0.0), attn_pdrop=hf.get("attn_pdrop", 0.0),
                     resid_pdrop=hf.get("resid_pdrop", 0.0))


def state_dict_from_codegen(hf, config):
    """CodeGenForCausalLM weights -> ours (see above); the causal-mask buffers of old files
    (attn.bias, attn.masked_bias) are no weights and are left out."""
    def get(key):
        if key not in hf:
            raise ValueError(f"the CodeGen checkpoint lacks {key}")
        return hf[key]
    C, H = config.n_embd, config.n_head
    D, R = C // H, config.rotary_dim
    # (D,) new dim <- old dim
    perm = torch.cat([torch.arange(0, R, 2), torch.arange(1, R, 2), torch.arange(R, D)])
    wte = get("transformer.wte.weight")
    sd = {"embed_tokens.weight": wte, "final_layernorm.weight": get("transformer.ln_f.weight"),
          "final_layernorm.bias": get("transformer.ln_f.bias"), "lm_head.bias": get("lm_head.bias"),
          # absent when tied
          "lm_head.weight": wte if hf.get("lm_head.weight") is None else hf["lm_head.weight"]}
    for i in range(config.n_layer):
        old, new = f"transformer.h.{i}.", f"layers.{i}."
        # (chunk, qvk, rows, C)
        qkv = get(old + "attn.qkv_proj.weight").view(CODEGEN_MP_NUM, 3, C // CODEGEN_MP_NUM, C)
        q, v, k = (w.reshape(H, D, C) for w in qkv.unbind(1))  # each (H, D, C)
        sd[new + "self_attn.qkv_proj.weight"] = (torch.cat([q[:, perm], k[:, perm], v])
                                                 .reshape(3 * C, C))
        sd[new + "self_attn.qkv_proj.bias"] = wte.new_zeros(3 * C)
        sd[new + "self_attn.dense.weight"] = get(old + "attn.out_proj.weight")
        sd[new + "self_attn.dense.bias"] = wte.new_zeros(C)
        for ours, theirs in [("input_layernorm", "ln_1"), ("mlp.fc1", "mlp.fc_in"),
                             ("mlp.fc2", "mlp.fc_out")]:
            for kind in ("weight", "bias"):
                sd[f"{new}{ours}.{kind}"] = get(f"{old}{theirs}.{kind}")
    return sd


def from_pretrained(directory):
    """A Phi from a Hugging Face checkpoint directory (config.json + safetensors or
    pytorch_model.bin): PhiForCausalLM, or CodeGenForCausalLM (model_type "codegen", e.g.
    Salesforce/codegen-350M-mono), converted."""
    directory = Path(directory)
    hf_config = json.loads((directory / "config.json").read_text())
    if hf_config.get("model_type") == "codegen":
        config = config_from_codegen(hf_config)
        state_dict = state_dict_from_codegen(read_hf_weights(directory), config)
    else:
        config = config_from_hf(hf_config)
        state_dict = state_dict_from_hf(read_hf_weights(directory))
    model = Phi(config)
    model.load_state_dict(state_dict)
    return model


def save_pretrained(model, directory):
    """Write config.json + model.safetensors that transformers' PhiForCausalLM.from_pretrained
    reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.config, model.lm_head.weight.dtype)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    tensors = {k: v.contiguous()
               for k, v in state_dict_to_hf(model.state_dict(), model.config).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_model(path, device="cpu"):
    """A model ready for inference from a train.py checkpoint file, an out_dir holding ckpt.pt, or a
    Hugging Face directory (Phi or CodeGen)."""
    path = Path(path)
    if (path / "config.json").exists():
        model = from_pretrained(path)
    else:
        ckpt_file = path / "ckpt.pt" if path.is_dir() else path
        if not ckpt_file.exists():
            raise FileNotFoundError(f"{path} is neither a train.py checkpoint, an out_dir "
                                    "with ckpt.pt, nor a Hugging Face directory with config.json")
        try:
            ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
            args = {f.name: ckpt["model_args"][f.name] for f in fields(PhiConfig)}
        except Exception as e:
            # torch reports a cut-short zip, an empty file or garbage in many ways
            reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
            raise UserError(f"{ckpt_file} is not a readable checkpoint ({reason})") from None
        model = Phi(PhiConfig(**args))
        model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
