"""
The one table between model.GPT and transformers' names, used in both directions: export_hf.py writes with it,
load_gpt2.py reads with it.

- GPT-2 (GPT2LMHeadModel): GPT's own names under `transformer.`; the four Conv1D weights are stored (in, out),
  nn.Linear's transposed. lm_head is not stored: it is wte.
- Starcoder2 (Starcoder2ForCausalLM): the same model as GPT with rope=True (LayerNorm, tanh-GELU MLP c_fc/c_proj,
  tied embeddings, rotate-half RoPE, num_key_value_heads, sliding_window), under other names, with c_attn split
  into q_proj, k_proj and v_proj. Its LayerNorms always have biases; its Linears only with use_bias (always
  written, as zeros where bias=False: llama.cpp's Starcoder2 requires them).
"""

import re

import torch

from model import GPTConfig

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# model.GPT's module -> Starcoder2ForCausalLM's; N is a layer. c_attn is q_proj, k_proj and v_proj stacked.
STARCODER2 = {
    "transformer.wte": "model.embed_tokens",
    "transformer.h.N.ln_1": "model.layers.N.input_layernorm",
    "transformer.h.N.attn.c_proj": "model.layers.N.self_attn.o_proj",
    "transformer.h.N.ln_2": "model.layers.N.post_attention_layernorm",
    "transformer.h.N.mlp.c_fc": "model.layers.N.mlp.c_fc",
    "transformer.h.N.mlp.c_proj": "model.layers.N.mlp.c_proj",
    "transformer.ln_f": "model.norm",
}
C_ATTN = "transformer.h.N.attn.c_attn"
QKV = tuple(f"model.layers.N.self_attn.{p}_proj" for p in "qkv")


def split_name(name):
    """'transformer.h.3.ln_1.weight' -> ('transformer.h.N.ln_1', 3, 'weight'); layer None outside the blocks."""
    module, _, leaf = name.rpartition(".")
    m = re.search(r"\.(\d+)(?=\.|$)", module)
    return (module[:m.start()] + ".N" + module[m.end():], int(m.group(1)), leaf) if m else (module, None, leaf)


def join_name(module, layer, leaf):
    return (module if layer is None else module.replace(".N", f".{layer}", 1)) + "." + leaf


def gpt2_tensors(sd, config):
    """GPT's state_dict (gqa off) as GPT2LMHeadModel's tensors; biases are zeros where bias=False."""
    sd = with_zero_biases(sd, config)
    return {name: t.t() if name.endswith(GPT2_CONV1D) else t for name, t in sd.items() if name != "lm_head.weight"}


def starcoder2_tensors(sd, config):
    """GPT's state_dict (rope on) as Starcoder2ForCausalLM's tensors, with use_bias=True: biases are zeros where
    bias=False, because llama.cpp's Starcoder2 requires every bias (use_bias=False converts but does not load)."""
    sd = with_zero_biases(sd, config)
    hd, nkv = config.n_embd // config.n_head, config.n_kv_head if config.gqa else config.n_head
    out = {}
    for name, t in sd.items():
        module, layer, leaf = split_name(name)
        if module == C_ATTN:  # rows [q | k | v]
            for part, rows in zip(QKV, t.split([config.n_head * hd, nkv * hd, nkv * hd])):
                out[join_name(part, layer, leaf)] = rows.contiguous()
        elif name != "lm_head.weight":
            out[join_name(STARCODER2[module], layer, leaf)] = t
    return out


def with_zero_biases(sd, config):
    """sd plus a zero bias for each LayerNorm and Linear when bias=False (a weight's first dimension is its
    output); the embeddings have none."""
    if config.bias:
        return sd
    modules = [k.removesuffix(".weight") for k in sd if k.endswith(".weight")
               and k not in ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight")]
    return {**sd, **{f"{m}.bias": sd[f"{m}.weight"].new_zeros(sd[f"{m}.weight"].shape[0]) for m in modules}}


def from_starcoder2(tensors, use_bias):
    """Starcoder2ForCausalLM's tensors under GPT's names (c_attn stacked again); lm_head, tied, is dropped.
    Linears without biases (use_bias=False) get zero ones: bias_free then decides whether GPT needs biases."""
    inverse = {v: k for k, v in STARCODER2.items()}
    sd, parts = {}, {}
    for name, t in tensors.items():
        module, layer, leaf = split_name(name)
        if module in QKV:
            parts.setdefault(join_name(C_ATTN, layer, leaf), [None] * 3)[QKV.index(module)] = t
        elif module in inverse:
            sd[join_name(inverse[module], layer, leaf)] = t
        elif name != "lm_head.weight":
            sd[name] = t  # a name not in the table: gpt_from_state_dict lists it as unexpected
    sd.update({name: torch.cat(qkv) for name, qkv in parts.items() if None not in qkv})  # else: c_attn missing
    if not use_bias:
        sd = {**{k.replace(".weight", ".bias"): torch.zeros(t.shape[0]) for k, t in sd.items()
                 if re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", k)}, **sd}
    return sd


def bias_free(sd):
    """(sd, bias): biases that are all exactly zero are no biases, so sd without them and bias=False."""
    biases = [t for k, t in sd.items() if k.endswith(".bias")]
    if biases and any(t.any() for t in biases):
        return sd, True
    return {k: t for k, t in sd.items() if not k.endswith(".bias")}, False


def hf_starcoder2_config(config):
    """config.json of Starcoder2ForCausalLM for GPTConfig config (rope on)."""
    return {
        "architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2",
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd, "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head if config.gqa else config.n_head,
        "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": config.block_size, "norm_epsilon": 1e-5,
        "rope_theta": config.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "sliding_window": config.window_size if config.swa else None, "use_bias": True,  # bias=False: zeros (llama.cpp)
        "tie_word_embeddings": True, "attention_dropout": config.dropout, "residual_dropout": config.dropout,
        "embedding_dropout": 0.0, "bos_token_id": None, "eos_token_id": None,
        "torch_dtype": "float32",
    }


def hf_gpt2_config(config):
    """config.json of GPT2LMHeadModel for GPTConfig config (rope and swa off; gqa off or expanded)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "tie_word_embeddings": True, "scale_attn_weights": True,
        "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32",
    }


# what a Starcoder2 config.json must say for GPT to compute the same function
STARCODER2_FIXED = {"hidden_act": ("gelu_pytorch_tanh", "gelu_new"), "norm_epsilon": (1e-5,),
                    "tie_word_embeddings": (True,)}


def config_from_starcoder2(hf, bias):
    """GPTConfig of a Starcoder2 config.json; ValueError for what GPT does not implement."""
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    n_kv_head = hf.get("num_key_value_heads") or n_head
    rope = hf.get("rope_parameters") or {"rope_theta": hf.get("rope_theta", 10000.0)}
    problems = [f"{key}={hf[key]!r} (model.GPT implements {' or '.join(map(repr, allowed))})"
                for key, allowed in STARCODER2_FIXED.items() if key in hf and hf[key] not in allowed]
    problems += [f"rope_type={rope['rope_type']!r} (model.GPT implements 'default')"] \
        if rope.get("rope_type", "default") != "default" else []
    problems += [f"intermediate_size={hf['intermediate_size']} (GPT's MLP is 4 * hidden_size wide)"] \
        if hf.get("intermediate_size", 4 * n_embd) != 4 * n_embd else []
    problems += [f"head_dim={hf['head_dim']} (GPT's is hidden_size // num_attention_heads)"] \
        if hf.get("head_dim") not in (None, n_embd // n_head) else []
    if problems:
        raise ValueError("config.json has " + ", ".join(problems))
    window = hf.get("sliding_window")
    return GPTConfig(block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                     n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd, dropout=0.0, bias=bias,
                     rope=True, rope_theta=float(rope.get("rope_theta", 10000.0)), gqa=n_kv_head != n_head,
                     n_kv_head=n_kv_head if n_kv_head != n_head else GPTConfig.n_kv_head,
                     swa=window is not None, window_size=window or GPTConfig.window_size)
