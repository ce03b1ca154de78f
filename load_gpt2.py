"""
OpenAI's GPT-2 weights, as Hugging Face publishes them in safetensors, loaded into model.GPT.

    from load_gpt2 import load_gpt2, load_model
    model, tokenizer, ckpt = load_model("resume", "out-shakespeare-char")   # what train.py, sample.py, ... call
    model = load_gpt2("gpt2")                          # gpt2, gpt2-medium, gpt2-large, gpt2-xl: fetched once
    model = load_gpt2("path/to/dir", gqa=True, n_kv_head=4)   # a save_pretrained dir or a .safetensors file

    python load_gpt2.py gpt2                           # fetch, verify, print a summary
    python load_gpt2.py gpt2 --out=out-gpt2            # out-gpt2/ckpt.pt: train.py resumes it, sample.py reads it

Top to bottom:
- load_model: the one answer to "which model is init_from?" for train.py, sample.py, export_hf.py, hellaswag.py.
- read_safetensors: the format read by hand (8-byte little-endian header length, JSON header, raw data),
  memory-mapped: no pickle runs, and even gpt2-xl is held once in RAM (in the model), not several times.
- gpt2_state_dict: Hugging Face's names to model.GPT's. Two layouts exist: transformers' save_pretrained
  (`transformer.h.0.attn.c_attn.weight`) and the hub's original files (`h.0.attn.c_attn.weight`, plus the
  causal-mask buffers `h.N.attn.bias` and sometimes `h.N.attn.masked_bias`). Neither stores lm_head: it is
  wte. GPT-2's Conv1D keeps its weight as (in, out), nn.Linear as (out, in), so those are transposed.
- apply_overrides: dropout, an inference-time sliding window, GQA made by mean-pooling key/value heads,
  a shorter block_size.
- Directories export_hf.py writes are read back through the same name table (hf_names.py): Starcoder2 ones
  (model_type starcoder2: a model with rope) too. Biases that are all zero load as bias=False.
- fetch: `openai-community/<name>` from the Hugging Face hub into its cache (download.py: resumed, verified).
"""

import contextlib
import dataclasses
import json
import math
import mmap
import os
import re
import sys

import requests
import torch

import hf_names
from checkpoint import checkpoint_tokenizer, load_checkpoint, save_checkpoint
from configurator import UserError, exit_with_error, load_config
from download import DownloadError, check_file, download, find_cached, remote_info, repo_dir, short
from model import GPT, GPTConfig

NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HEAD_SIZE = 64  # every GPT-2 size has 64-wide heads: n_head = n_embd // 64 when no config.json says


class LoadError(UserError, ValueError):
    """A checkpoint that cannot be loaded, or an override that cannot be applied."""


def load_model(init_from, out_dir="out", ckpt=None, **overrides):
    """
    (model, tokenizer spec, checkpoint) for init_from: 'resume' is out_dir/ckpt.pt (or ckpt, when the caller has
    read it already), whose whole checkpoint comes back for what resuming needs (optimizer, iter_num); anything
    else is GPT-2 through load_gpt2, with the checkpoint None. overrides: as apply_overrides takes them, for both.
    """
    if init_from != "resume":
        return load_gpt2(init_from, **overrides), {"name": "gpt2"}, None
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    sd = {k: v for k, v in ckpt["model"].items() if k != "lm_head.weight"}  # lm_head is wte
    sd, model_config = apply_overrides(sd, GPTConfig(**ckpt["model_args"]), overrides, source=path)
    return gpt_from_state_dict(sd, model_config, path), checkpoint_tokenizer(ckpt, path), ckpt


def load_gpt2(name_or_path, **overrides):
    """
    GPT with OpenAI's GPT-2 weights. name_or_path: gpt2, gpt2-medium, gpt2-large or gpt2-xl (fetched from
    the hub, or taken from its cache), a directory in Hugging Face's format, or a .safetensors file (its
    configuration from config.json beside it, else from the tensors' shapes). overrides: dropout,
    swa/window_size, gqa/n_kv_head, block_size (see apply_overrides). Raises LoadError or DownloadError.
    """
    path = fetch(name_or_path) if name_or_path in NAMES else name_or_path
    try:
        tensors, hf_config = read_hf_weights(path)
    except LoadError as e:
        if name_or_path in NAMES:  # a bad file in the cache would fail every run without a request
            raise LoadError(f"{e}; delete {os.path.dirname(path)} to download {name_or_path} afresh") from None
        raise
    if hf_config.get("model_type") == "starcoder2":  # what export_hf.py writes for a model with rope
        sd, bias = hf_names.bias_free(hf_names.from_starcoder2(tensors, hf_config.get("use_bias", True)))
        try:
            config = hf_names.config_from_starcoder2(hf_config, bias)
        except (KeyError, ValueError) as e:
            raise LoadError(f"{path}: Starcoder2 {type(e).__name__}: {e}") from None
    else:
        sd, bias = hf_names.bias_free(gpt2_state_dict(tensors, path))  # zero biases: bias=False (export_hf.py)
        config = dataclasses.replace(gpt2_config(sd, hf_config, path), bias=bias)
    sd, config = apply_overrides(sd, config, overrides, source="GPT-2")
    return gpt_from_state_dict(sd, config, path)


# ----------------------------------------------------------------------------------------------------
# Reading safetensors

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """
    {name: tensor} of a .safetensors file, as views into a private memory map (pages are read when used).
    Layout: 8 bytes little-endian n, n bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}},
    then the data, which the offsets index.
    """
    try:
        file_size = os.path.getsize(path)
    except OSError as e:
        raise LoadError(f"cannot read {path} ({e.strerror})") from None
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if file_size < 8 or 8 + n > file_size:
            raise LoadError(f"{path} is truncated or no safetensors file: its header claims {n:,} bytes, "
                            f"the whole file has {file_size:,}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise LoadError(f"{path} has a corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise LoadError(f"{path} has a corrupt safetensors header (not a JSON object)")
        # copy-on-write: torch wants a writable buffer, and the file itself must never change
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    data_start, tensors = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[info["dtype"]], list(info["shape"]), info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in shape + [begin, end]):  # no bool, float or negative
                raise ValueError
            numel, span = math.prod(shape), end - begin
        except (KeyError, TypeError, ValueError):
            raise LoadError(f"{path}: tensor '{name}' has a corrupt entry or a dtype other than "
                            f"{', '.join(SAFETENSORS_DTYPES)}: {str(info)[:200]}") from None
        if span != numel * dtype.itemsize or begin < 0 or data_start + end > file_size:
            raise LoadError(f"{path} is truncated or corrupt: tensor '{name}' {shape} {info['dtype']} needs "
                            f"bytes {begin:,}..{end:,} of a data section of {file_size - data_start:,}")
        tensors[name] = (torch.frombuffer(data, dtype=dtype, count=numel, offset=data_start + begin).view(shape)
                         if numel else torch.empty(shape, dtype=dtype))
    return tensors


def read_hf_weights(path):
    """Read a Hugging Face-format directory or .safetensors file: its tensors and its config.json ({} if none)."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            files = [os.path.join(path, "model.safetensors")]
        elif os.path.isfile(index):  # a sharded save_pretrained
            files = sorted({os.path.join(path, f) for f in read_json(index).get("weight_map", {}).values()})
        else:
            if os.path.isfile(os.path.join(path, "ckpt.pt")):
                raise LoadError(f"{path} is a training run's folder (it holds ckpt.pt): use --init_from=resume "
                                f"--out_dir={path}")
            raise LoadError(f"{path} holds no model.safetensors (pickled pytorch_model.bin files are not read)")
        config_path = os.path.join(path, "config.json")
    elif os.path.isfile(path):
        files, config_path = [path], os.path.join(os.path.dirname(path), "config.json")
    else:
        raise LoadError(f"'{path}' is neither a GPT-2 name ({', '.join(NAMES)}) nor a file or directory")
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(file))
    return tensors, read_json(config_path) if os.path.isfile(config_path) else {}


def read_json(path):
    """The JSON object in path (config.json, an index), or one LoadError."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except ValueError as e:
        raise LoadError(f"{path} is not valid JSON ({short(e)})") from None
    if not isinstance(value, dict):
        raise LoadError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


# ----------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 -> model.GPT

CONV1D_WEIGHTS = hf_names.GPT2_CONV1D
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # not ".attn.c_attn.bias", which is a weight
# config.json values that model.GPT implements: another value would change the outputs silently
GPT2_FIXED = {"model_type": ("gpt2",), "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
              "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,), "add_cross_attention": (False,),
              "scale_attn_by_inverse_layer_idx": (False,), "tie_word_embeddings": (True,)}


def gpt2_state_dict(tensors, source):
    """Hugging Face GPT-2 tensors, either layout, as model.GPT's state_dict (without lm_head: it is wte)."""
    sd, origin = {}, {}
    for name, t in tensors.items():
        if name.endswith(MASK_BUFFERS) or name == "lm_head.weight":
            continue
        key = name if name.startswith("transformer.") else "transformer." + name
        if key in sd:
            raise LoadError(f"{source}: both '{origin[key]}' and '{name}' would fill {key}")
        sd[key], origin[key] = (t.t() if key.endswith(CONV1D_WEIGHTS) and t.dim() == 2 else t), name
    wte = sd.get("transformer.wte.weight")
    if "lm_head.weight" in tensors and wte is not None and not torch.equal(tensors["lm_head.weight"], wte):
        raise LoadError(f"{source}: lm_head.weight differs from wte, but GPT ties the two (as GPT-2 does)")
    return sd


def gpt2_config(sd, hf_config, source):
    """GPTConfig from config.json where there is one, else from the tensors' shapes."""
    wte, wpe = sd.get("transformer.wte.weight"), sd.get("transformer.wpe.weight")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if wte is None or wpe is None or wte.dim() != 2 or wpe.dim() != 2 or not layers:
        raise LoadError(f"{source} does not hold GPT-2 (no wte, wpe and h.N tensors); it has: {listing(sd)}")
    for key, allowed in GPT2_FIXED.items():
        if key in hf_config and hf_config[key] not in allowed:
            raise LoadError(f"{source}: config.json has {key}={hf_config[key]!r}, but model.GPT implements "
                            f"only {' or '.join(map(repr, allowed))}")
    n_embd = hf_config.get("n_embd", wte.shape[1])
    if hf_config.get("n_inner") not in (None, 4 * n_embd):
        raise LoadError(f"{source}: config.json has n_inner={hf_config['n_inner']}, model.GPT's MLP is 4 * n_embd wide")
    try:
        return GPTConfig(block_size=hf_config.get("n_positions", wpe.shape[0]),
                         vocab_size=hf_config.get("vocab_size", wte.shape[0]),
                         n_layer=hf_config.get("n_layer", max(layers) + 1),
                         n_head=hf_config.get("n_head", max(n_embd // HEAD_SIZE, 1)),
                         n_embd=n_embd, dropout=0.0, bias=True)
    except ValueError as e:
        raise LoadError(f"{source}: {e}") from None


OVERRIDES = {"dropout": float, "swa": bool, "window_size": int, "gqa": bool, "n_kv_head": int,
             "block_size": int, "rope": bool}


def apply_overrides(sd, config, overrides, source="the checkpoint"):
    """Change a trained GPT (its state_dict and GPTConfig) as overrides ask (see OVERRIDES); returns both."""
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise LoadError(f"unknown override '{key}': the ones that apply to a trained model are {', '.join(OVERRIDES)}")
        kind = OVERRIDES[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise LoadError(f"override {key}={value!r} must be {kind.__name__}")
    changes = dict(overrides)
    if changes.get("rope", config.rope) != config.rope:
        learned = "rotary positions (RoPE)" if config.rope else "absolute position embeddings (wpe), not rotary ones"
        raise LoadError(f"rope={changes['rope']} cannot be applied to {source}: it learned {learned}; "
                        f"train a model with rope={changes['rope']} from scratch instead")
    if "window_size" in changes and not changes.get("swa", config.swa):
        raise LoadError(f"window_size={changes['window_size']} needs swa=True")
    if "block_size" in changes:
        if changes["block_size"] > config.block_size:
            raise LoadError(f"block_size={changes['block_size']} exceeds the {config.block_size} positions "
                            f"{source} was trained on")
        if "transformer.wpe.weight" in sd:
            sd = {**sd, "transformer.wpe.weight": sd["transformer.wpe.weight"][:changes["block_size"]]}
    gqa, n_kv_head = changes.get("gqa", config.gqa), changes.get("n_kv_head", config.n_kv_head)
    if config.gqa and (not gqa or n_kv_head != config.n_kv_head):
        raise LoadError(f"{source} already has GQA with n_kv_head={config.n_kv_head}; its key/value heads "
                        f"cannot be regrouped or restored")
    if not gqa and "n_kv_head" in changes:
        raise LoadError(f"n_kv_head={n_kv_head} needs gqa=True (key/value heads are then mean-pooled)")
    try:
        new_config = dataclasses.replace(config, **changes)
    except ValueError as e:
        raise LoadError(str(e)) from None
    if new_config.gqa and not config.gqa:
        sd = dict(sd)
        for key in [k for k in sd if k.endswith(("attn.c_attn.weight", "attn.c_attn.bias"))]:
            if sd[key].shape[:1] == (3 * config.n_embd,):  # else gpt_from_state_dict reports the wrong shape
                sd[key] = pool_kv_heads(sd[key], config.n_head, new_config.n_kv_head)
    return sd, new_config


def pool_kv_heads(c_attn, n_head, n_kv_head):
    """
    GQA from multi-head attention (Ainslie et al. 2023, the start for uptraining): key and value heads in
    each group of n_head // n_kv_head consecutive heads are replaced by their mean, as query head h reads
    key/value head h // (n_head // n_kv_head). c_attn's rows (weight or bias) are [q | k | v], n_head heads each.
    """
    q, k, v = c_attn.chunk(3, dim=0)                          # (nh*hd, ...) each
    rest, hd = k.shape[1:], k.shape[0] // n_head

    def pool(x):
        return x.reshape(n_kv_head, n_head // n_kv_head, hd, *rest).mean(dim=1).reshape(n_kv_head * hd, *rest)
    return torch.cat((q, pool(k), pool(v)), dim=0)            # ((nh + 2*nkv)*hd, ...)


@contextlib.contextmanager
def no_random_init():
    """nn.init's random fills as no-ops, for a model whose every weight is about to be overwritten (as transformers
    skips them): GPT(config) then costs its allocations only (random init: ~25 s for gpt2-xl). Built on the meta
    device instead, the model would import torch._dynamo and symbolic shapes on its first fill or to_empty (1-2 s
    of sample.py's start)."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fill in saved.items():
            setattr(torch.nn.init, name, fill)


def gpt_from_state_dict(sd, config, source):
    """GPT(config) with every parameter filled exactly once from sd (GPT's names, no lm_head: it is wte)."""
    with no_random_init():  # every weight is overwritten below
        model = GPT(config)
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected.keys() - sd.keys()), sorted(sd.keys() - expected.keys())
    wrong = [f"{k} {tuple(sd[k].shape)} for {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = [f"{what}: {listing(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise LoadError(f"{source} does not fit GPT(n_layer={config.n_layer}, n_head={config.n_head}, "
                        f"n_embd={config.n_embd}, vocab_size={config.vocab_size}, block_size={config.block_size}); "
                        + "; ".join(problems))
    with torch.no_grad():
        for k, param in expected.items():
            param.copy_(sd[k])
    return model


def listing(keys, most=12):
    keys = list(keys)
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


# ----------------------------------------------------------------------------------------------------
# Fetching GPT-2 from the Hugging Face hub

# (size in bytes, sha256) of openai-community/<name>/model.safetensors where established; the others are
# checked against what the server announces (size, and the sha256 the hub sends as X-Linked-Etag).
PINNED = {"gpt2": (548_105_171, "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707")}


def cached_gpt2(name):
    """The path of <name>'s model.safetensors in the hub cache (also under the hub's older name), or None."""
    return find_cached([f"openai-community/{name}", name], "model.safetensors")


def fetch(name):
    """The path of openai-community/<name>'s model.safetensors in the hub cache, downloading it (then its
    config.json) when it is not there yet. A file placed by hand needs no config.json beside it."""
    cached = cached_gpt2(name)
    if cached:
        return cached
    repo = f"openai-community/{name}"
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo}/resolve/main/model.safetensors"
    by_hand = os.path.join(repo_dir(repo), "snapshots", "main", "model.safetensors")
    try:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise requests.ConnectionError("HF_HUB_OFFLINE is set")
        commit, size, sha256 = remote_info(url)
    except requests.RequestException as e:
        raise DownloadError(f"cannot download {url} ({short(e)}); with no network, fetch that file elsewhere "
                            f"and place it at {by_hand}") from None
    snapshot = os.path.join(repo_dir(repo), "snapshots", commit)
    size, sha256 = PINNED.get(name, (size, sha256))
    path = download(url, os.path.join(snapshot, "model.safetensors"), size, sha256,
                    check=readable_by(read_safetensors))
    download(url.replace("model.safetensors", "config.json"), os.path.join(snapshot, "config.json"),
             check=readable_by(read_json))
    os.makedirs(os.path.join(repo_dir(repo), "refs"), exist_ok=True)
    with open(os.path.join(repo_dir(repo), "refs", "main"), "w") as f:  # as huggingface_hub leaves it
        f.write(commit)
    return path


def readable_by(read):
    """A download's content check: why read(path) refuses the file (an HTML error page, say), or None."""
    def problem(path):
        try:
            read(path)
        except LoadError as e:
            return str(e)
        return None
    return problem


# ----------------------------------------------------------------------------------------------------
# Command line

DEFAULTS = dict(
    init_from="gpt2",  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a Hugging Face-format directory or .safetensors file
    out="",            # write a checkpoint here: a .pt path, or a directory for DIR/ckpt.pt; '' writes none
    # changes to GPT-2 (apply_overrides); None keeps GPT-2's
    dropout=None, swa=None, window_size=None, gqa=None, n_kv_head=None, block_size=None, rope=None,
)


def main(argv=None):
    """Fetch and verify OpenAI's GPT-2 weights; optionally write a checkpoint train.py resumes and sample.py reads."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and not argv[0].endswith(".py"):  # `load_gpt2.py gpt2`: the name first
        argv[0] = f"--init_from={argv[0]}"
    try:
        c = load_config(DEFAULTS, argv)
        name, overrides = c["init_from"], {k: c[k] for k in OVERRIDES if c[k] is not None}
        if name in PINNED:  # a file found in the cache is checked too, not only a fresh download
            problem = check_file(fetch(name), *PINNED[name])
            if problem:
                raise LoadError(f"{cached_gpt2(name)} is not OpenAI's {name} ({problem}): delete it and run again")
            print(f"{cached_gpt2(name)}: size and sha256 verified")
        model = load_gpt2(name, **overrides)
    except UserError as e:
        exit_with_error(e)
    print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters (lm_head shares wte's)")
    print(model.config)
    if c["out"]:
        out = c["out"] if c["out"].endswith(".pt") else os.path.join(c["out"], "ckpt.pt")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            save_checkpoint(out, {"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                                  "optimizer": None, "iter_num": 0, "best_val_loss": 1e9,
                                  "config": {"init_from": name, **overrides}, "tokenizer": {"name": "gpt2"}})
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            exit_with_error(f"cannot write {out} ({getattr(e, 'strerror', None) or 'torch.save failed: is the disk full?'})")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
