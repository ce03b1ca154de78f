"""
OpenAI's GPT-2 weights, as Hugging Face publishes them in safetensors, loaded into model.GPT.

    from load_gpt2 import load_gpt2
    model = load_gpt2("gpt2")                          # gpt2, gpt2-medium, gpt2-large, gpt2-xl: fetched once
    model = load_gpt2("path/to/dir", gqa=True, n_kv_head=4)   # a save_pretrained dir or a .safetensors file

    python load_gpt2.py gpt2                           # fetch, verify, print a summary
    python load_gpt2.py gpt2 --out out-gpt2/ckpt.pt    # a checkpoint train.py resumes and sample.py reads

Top to bottom:
- Downloads: `openai-community/<name>` from $HF_ENDPOINT (default https://huggingface.co) into the
  Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), where a file
  already there is used as it is. Streamed with a progress line, resumed from a partial file with an HTTP
  Range request, checked for size and sha256, then renamed into place.
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
"""

import argparse
import dataclasses
import glob
import hashlib
import json
import math
import mmap
import os
import re
import sys
import time

import requests
import torch

import hf_names
from model import GPT, GPTConfig

NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# (size in bytes, sha256) of openai-community/<name>/model.safetensors where established; the others are
# checked against what the server announces (size, and the sha256 the hub sends as X-Linked-Etag).
PINNED = {"gpt2": (548_105_171, "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707")}
HEAD_SIZE = 64  # every GPT-2 size has 64-wide heads: n_head = n_embd // 64 when no config.json says
TIMEOUT = 30    # seconds without a byte before a connection counts as lost
CHUNK = 1 << 16 # bytes per read and write; a lost connection loses at most the chunk in flight


class LoadError(ValueError):
    """A checkpoint that cannot be loaded, or an override that cannot be applied."""


class DownloadError(OSError):
    """A download that failed; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------
# The Hugging Face hub cache and downloads

def hub_cache_dir():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.environ.get("HF_HOME") or os.path.join(cache, "huggingface"), "hub")


def repo_dir(name):
    return os.path.join(hub_cache_dir(), f"models--openai-community--{name}")


def find_cached(name, filename):
    """filename from a cached snapshot of openai-community/<name> (refs/main's first), or None."""
    for repo in (repo_dir(name), os.path.join(hub_cache_dir(), f"models--{name}")):  # the 2nd: before the hub's rename
        snapshots = sorted(glob.glob(os.path.join(repo, "snapshots", "*")))
        try:
            with open(os.path.join(repo, "refs", "main")) as f:
                main = os.path.join(repo, "snapshots", f.read().strip())
            snapshots.sort(key=lambda s: s != main)
        except OSError:
            pass
        for snapshot in snapshots:
            if os.path.isfile(os.path.join(snapshot, filename)):
                return os.path.join(snapshot, filename)
    return None


def fetch(name):
    """The path of openai-community/<name>'s model.safetensors in the hub cache, downloading it (then its
    config.json) when it is not there yet. A file placed by hand needs no config.json beside it."""
    cached = find_cached(name, "model.safetensors")
    if cached:
        return cached
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/openai-community/{name}/resolve/main/model.safetensors"
    by_hand = os.path.join(repo_dir(name), "snapshots", "main", "model.safetensors")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        if offline:
            raise requests.ConnectionError("HF_HUB_OFFLINE is set")
        commit, size, sha256 = remote_info(url)
    except requests.RequestException as e:
        raise DownloadError(f"cannot download {url} ({short(e)}); with no network, fetch that file elsewhere "
                            f"and place it at {by_hand}") from None
    snapshot = os.path.join(repo_dir(name), "snapshots", commit)
    size, sha256 = PINNED.get(name, (size, sha256))
    path = download(url, os.path.join(snapshot, "model.safetensors"), size, sha256)
    download(url.replace("model.safetensors", "config.json"), os.path.join(snapshot, "config.json"))
    os.makedirs(os.path.join(repo_dir(name), "refs"), exist_ok=True)
    with open(os.path.join(repo_dir(name), "refs", "main"), "w") as f:  # as huggingface_hub leaves it
        f.write(commit)
    return path


def remote_info(url):
    """(commit, size, sha256) that the hub announces for url; size and sha256 may be None. The hub answers
    a file stored in LFS with a redirect that carries them as X-Linked-Size and X-Linked-Etag."""
    r = requests.head(url, allow_redirects=False, timeout=TIMEOUT, headers={"Accept-Encoding": "identity"})
    if r.status_code >= 400:
        raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
    size = r.headers.get("X-Linked-Size") or (r.headers.get("Content-Length") if r.status_code == 200 else None)
    etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").removeprefix("W/").strip('"')
    commit = r.headers.get("X-Repo-Commit", "")
    return (commit if re.fullmatch(r"[0-9A-Za-z._-]+", commit) else "main", int(size) if size else None,
            etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)  # a git sha1 etag (40 hex) is no sha256


def download(url, dest, size=None, sha256=None, attempts=3):
    """Stream url to dest through dest + '.incomplete', resuming that partial file when it exists (also
    after a connection lost mid-way, up to `attempts` times). The size (the server's, when not given) and
    sha256 are checked before the rename into place; a failed check deletes the partial file."""
    part = dest + ".incomplete"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            size = stream_to(url, part, size)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if attempt == attempts:
                raise DownloadError(f"downloading {url} failed ({short(e)}); {have:,} bytes are kept in {part}: "
                                    f"run again to resume") from None
            print(f"\nconnection lost ({short(e)}); resuming from byte {have:,}", file=sys.stderr)
    problem = check_file(part, size, sha256)
    if problem:
        os.remove(part)
        raise DownloadError(f"{url} failed its check ({problem}); deleted the partial file {part}, "
                            f"run again to download it afresh")
    os.replace(part, dest)
    return dest


def stream_to(url, part, size):
    """Append url's bytes to the partial file part (from its current length on); returns the file's full
    size: the one given, else the one the server announces (None if it does not)."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}  # a gzipped body would not match the announced size
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
        if r.status_code == 416:
            return size  # nothing left past `have`: the partial file is whole (check_file decides)
        if r.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code != 206:
            have = 0  # the server ignored the Range: start over
        total = size or announced_size(r)
        name, done, shown, start = os.path.basename(part).removesuffix(".incomplete"), have, None, time.time()
        with open(part, "ab" if have else "wb") as f:
            for chunk in r.iter_content(chunk_size=CHUNK):
                f.write(chunk)
                done += len(chunk)
                step = 100 * done // total if total else done >> 20  # redraw once per percent (or MB)
                if step != shown:
                    shown = step
                    show_progress(name, done, total, (done - have) / max(time.time() - start, 1e-6))
        print(file=sys.stderr)  # end the progress line
    return total


def announced_size(r):
    content_range = r.headers.get("Content-Range", "")  # "bytes 100-199/200" answers a Range request
    if r.status_code == 206 and content_range.rpartition("/")[2].isdigit():
        return int(content_range.rpartition("/")[2])
    if r.status_code == 200 and r.headers.get("Content-Length", "").isdigit():
        return int(r.headers["Content-Length"])
    return None


def show_progress(name, done, total, speed):
    percent = f"{100 * done / total:5.1f}% " if total else ""
    size = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB" if total else f"{done / 1e6:,.1f} MB"
    print(f"\rdownloading {name}: {percent}{size} at {speed / 1e6:.1f} MB/s", end="", file=sys.stderr, flush=True)


def check_file(path, size, sha256):
    """What is wrong with the downloaded file, or None."""
    have = os.path.getsize(path)
    if size is not None and have != size:
        return f"{have:,} bytes where {size:,} were expected"
    if sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"sha256 {digest.hexdigest()} where {sha256} was expected"
    return None


def short(error):
    """An exception as one short line (requests nests them deeply)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."


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
            numel, span = math.prod(shape), end - begin
        except (KeyError, TypeError, ValueError):
            raise LoadError(f"{path}: tensor '{name}' has a corrupt entry or a dtype other than "
                            f"{', '.join(SAFETENSORS_DTYPES)}: {info}") from None
        if span != numel * dtype.itemsize or begin < 0 or data_start + end > file_size:
            raise LoadError(f"{path} is truncated or corrupt: tensor '{name}' {shape} {info['dtype']} needs "
                            f"bytes {begin:,}..{end:,} of a data section of {file_size - data_start:,}")
        tensors[name] = (torch.frombuffer(data, dtype=dtype, count=numel, offset=data_start + begin).view(shape)
                         if numel else torch.empty(shape, dtype=dtype))
    return tensors


def read_checkpoint(path):
    """(tensors, config.json as a dict or {}) of a Hugging Face-format directory or .safetensors file."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            files = [os.path.join(path, "model.safetensors")]
        elif os.path.isfile(index):  # a sharded save_pretrained
            files = sorted({os.path.join(path, f) for f in read_json(index).get("weight_map", {}).values()})
        else:
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
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise LoadError(f"{path} is not valid JSON ({e})") from None


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
OVERRIDE_HELP = {"dropout": "dropout for fine-tuning", "swa": "a sliding attention window at inference",
                 "window_size": "the window of swa", "gqa": "grouped-query attention, k/v heads mean-pooled in groups",
                 "n_kv_head": "key/value heads under gqa", "block_size": "a shorter context (crops wpe)",
                 "rope": "refused: GPT-2 learned absolute positions"}


def apply_overrides(sd, config, overrides, source="the checkpoint"):
    """(state_dict, GPTConfig) of a trained GPT changed as overrides ask; see OVERRIDES for the keys."""
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
            if sd[key].shape[:1] == (3 * config.n_embd,):  # else build_model reports the wrong shape
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


def build_model(sd, config, source):
    """GPT(config) with every parameter filled exactly once from sd (GPT's names, no lm_head: it is wte)."""
    with torch.device("meta"):  # no random init: every weight is overwritten (~25 s for gpt2-xl on 2 cores)
        model = GPT(config)
    model.to_empty(device="cpu")
    model.transformer.wte.weight = model.lm_head.weight  # to_empty gives new tensors, which unties them
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


def load_gpt2(name_or_path, **overrides):
    """
    GPT with OpenAI's GPT-2 weights. name_or_path: gpt2, gpt2-medium, gpt2-large or gpt2-xl (fetched from
    the hub, or taken from its cache), a directory in Hugging Face's format, or a .safetensors file (its
    configuration from config.json beside it, else from the tensors' shapes). overrides: dropout,
    swa/window_size, gqa/n_kv_head, block_size (see apply_overrides). Raises LoadError or DownloadError.
    """
    path = fetch(name_or_path) if name_or_path in NAMES else name_or_path
    tensors, hf_config = read_checkpoint(path)
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
    return build_model(sd, config, path)


# ----------------------------------------------------------------------------------------------------
# Command line

def save_checkpoint(model, path, config):
    """out_dir/ckpt.pt as train.py writes it (atomically: a crash never leaves half a checkpoint)."""
    ckpt = {"model": model.state_dict(), "model_args": dataclasses.asdict(model.config), "optimizer": None,
            "iter_num": 0, "best_val_loss": 1e9, "config": config, "tokenizer": {"name": "gpt2"}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def parse_bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not a boolean (True or False)")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch and verify OpenAI's GPT-2 weights; optionally write "
                                                 "a checkpoint that train.py resumes and sample.py reads.")
    parser.add_argument("name_or_path", help=f"{', '.join(NAMES)}, or a Hugging Face-format directory or .safetensors file")
    parser.add_argument("--out", help="write a checkpoint here (a .pt path, or a directory for DIR/ckpt.pt)")
    for key, kind in OVERRIDES.items():
        parser.add_argument(f"--{key}", type=parse_bool if kind is bool else kind, metavar=kind.__name__.upper(),
                            help=OVERRIDE_HELP[key])
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    try:
        if args.name_or_path in PINNED:  # a file found in the cache is checked too, not only a fresh download
            path = fetch(args.name_or_path)
            problem = check_file(path, *PINNED[args.name_or_path])
            if problem:
                raise LoadError(f"{path} is not OpenAI's {args.name_or_path} ({problem}): delete it and run again")
            print(f"{path}: size and sha256 verified")
        model = load_gpt2(args.name_or_path, **overrides)
    except (LoadError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.name_or_path}: {n_params:,} parameters (lm_head shares wte's)")
    print(model.config)
    if args.out:
        out = args.out if args.out.endswith(".pt") else os.path.join(args.out, "ckpt.pt")
        save_checkpoint(model, out, {"init_from": args.name_or_path, **overrides})
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
