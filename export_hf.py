"""
Export a model to a Hugging Face directory that transformers' AutoModelForCausalLM opens, with the same logits.

    python export_hf.py --out_dir=out-shakespeare-char              # out_dir/ckpt.pt -> out_dir/hf
    python export_hf.py --init_from=gpt2 --hf_dir=hf-gpt2           # a GPT-2 name or path works too

Which transformers class, by the model's switches:
- rope off: GPT2LMHeadModel, in the Conv1D layout of OpenAI's checkpoints. GPT-2 has no GQA, so under gqa the
  key/value heads are repeated to full multi-head attention: the same function, more weights.
- rope on (with any gqa, swa): Starcoder2ForCausalLM, which is exactly this model (LayerNorm, tanh-GELU MLP,
  tied embeddings, rotate-half RoPE, num_key_value_heads, sliding_window: a key at distance < window is seen).
- swa without rope: no transformers architecture has learned positions and a sliding window; an error.
Where bias=False, the biases written are zeros (llama.cpp's Starcoder2 requires every bias). The names go through
hf_names.py, the table load_gpt2.py reads back with. Weights are written as safetensors by write_safetensors
below (no pickle), beside config.json and the tokenizer: GPT-2's BPE files (vocab.json, merges.txt), or a
character vocabulary in char_vocab.json.
"""

import dataclasses
import json
import os

import torch

import hf_names
from configurator import UserError, exit_with_error, load_config
from load_gpt2 import load_model

DEFAULTS = dict(
    init_from="resume",   # resume (out_dir/ckpt.pt), a GPT-2 name (gpt2, ..., gpt2-xl) or a Hugging Face-format path
    out_dir="out",
    hf_dir="",            # where to write; '' is out_dir/hf for resume, else hf-<name>
)
GPT2_BPE = {  # tiktoken's source files for GPT-2 (with its sha256s), which are the files GPT2Tokenizer reads
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
SAFETENSORS_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class ExportError(UserError, ValueError):
    """A model that no transformers architecture can hold."""


def write_safetensors(path, tensors, metadata=None):
    """tensors into a .safetensors file, atomically: 8 bytes little-endian n, n bytes of JSON header (padded
    with spaces to a multiple of 8), then each tensor's bytes, in order."""
    header, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    os.replace(path + ".tmp", path)


def expand_kv_heads(sd, config):
    """GQA's state_dict as full multi-head attention: key/value head j repeated for its n_head // n_kv_head
    query heads, which is what attention with enable_gqa computes."""
    hd, group = config.n_embd // config.n_head, config.n_head // config.n_kv_head
    out = dict(sd)
    for name in [k for k in sd if k.endswith(("attn.c_attn.weight", "attn.c_attn.bias"))]:
        q, k, v = sd[name].split([config.n_head * hd, config.n_kv_head * hd, config.n_kv_head * hd])
        repeat = lambda x: x.reshape(config.n_kv_head, hd, *x.shape[1:]).repeat_interleave(group, dim=0).reshape(
            config.n_head * hd, *x.shape[1:])
        out[name] = torch.cat((q, repeat(k), repeat(v)))
    return out


def hf_layout(model):
    """(tensors, config.json dict) of model as GPT2LMHeadModel or Starcoder2ForCausalLM; see the docstring."""
    config, sd = model.config, model.state_dict()
    if config.swa and not config.rope:
        raise ExportError("swa=True without rope has no transformers architecture (GPT-2 has no sliding window, "
                          "Starcoder2 has rotary positions): train with rope=True to export a windowed model")
    if config.rope:
        return hf_names.starcoder2_tensors(sd, config), hf_names.hf_starcoder2_config(config)
    if config.gqa:
        sd, config = expand_kv_heads(sd, config), dataclasses.replace(config, gqa=False)
    return hf_names.gpt2_tensors(sd, config), hf_names.hf_gpt2_config(config)


def write_tokenizer(spec, hf_dir, block_size):
    """GPT-2's tokenizer files (from tiktoken's cache, checked), or the character vocabulary as char_vocab.json."""
    if spec.get("name") == "gpt2":
        from tiktoken.load import read_file_cached
        for filename, (url, sha256) in GPT2_BPE.items():
            try:
                data = read_file_cached(url, sha256)
            except Exception as e:  # no network and no cache, or a corrupt file: tiktoken raises many kinds
                raise ExportError(f"GPT-2's tokenizer file {url} could not be read ({str(e).splitlines()[0][:200]}); "
                                  f"tiktoken downloads it once, or reads it from $TIKTOKEN_CACHE_DIR") from None
            write_file(os.path.join(hf_dir, filename), data)
        eot = "<|endoftext|>"
        tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "bos_token": eot,
                            "eos_token": eot, "unk_token": eot, "add_prefix_space": False, "add_bos_token": False}
        write_file(os.path.join(hf_dir, "tokenizer_config.json"), json.dumps(tokenizer_config, indent=2).encode())
        return ["vocab.json", "merges.txt", "tokenizer_config.json"]
    write_file(os.path.join(hf_dir, "char_vocab.json"), json.dumps(spec, ensure_ascii=False).encode())
    return ["char_vocab.json"]


def write_file(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def export(model, tokenizer_spec, hf_dir):
    """Write model and its tokenizer to hf_dir; returns (architecture, the files written)."""
    tensors, hf_config = hf_layout(model)
    if tokenizer_spec.get("name") == "gpt2":
        hf_config.update(bos_token_id=50256, eos_token_id=50256)
    os.makedirs(hf_dir, exist_ok=True)
    files = write_tokenizer(tokenizer_spec, hf_dir, model.config.block_size)  # first: it may fail offline
    write_safetensors(os.path.join(hf_dir, "model.safetensors"), tensors, metadata={"format": "pt"})
    write_file(os.path.join(hf_dir, "config.json"), json.dumps(hf_config, indent=2).encode())
    return hf_config["architectures"][0], ["config.json", "model.safetensors"] + files


def main(argv=None):
    try:
        c = load_config(DEFAULTS, argv)
        hf_dir = c["hf_dir"] or (os.path.join(c["out_dir"], "hf") if c["init_from"] == "resume"
                                 else "hf-" + os.path.basename(os.path.normpath(c["init_from"])))
        model, spec, _ = load_model(c["init_from"], c["out_dir"])
        architecture, files = export(model, spec, hf_dir)
    except UserError as e:
        exit_with_error(e)
    except OSError as e:
        exit_with_error(f"cannot write {e.filename or 'hf_dir'}: {e.strerror or e}")
    print(f"wrote {hf_dir}: {architecture} ({', '.join(files)})")
    if spec.get("name") == "char":
        print("a character-level model: its vocabulary is char_vocab.json (itos: token id -> character), see the README")
    if model.config.swa:
        print(f"note: llama.cpp's Starcoder2 ignores sliding_window (it attends over the whole context), so there "
              f"this model computes something else past window_size={model.config.window_size} tokens")


if __name__ == "__main__":
    main()
