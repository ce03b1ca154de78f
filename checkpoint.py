"""
ckpt.pt, the one checkpoint format: written by train.py and load_gpt2.py --out, read by load_gpt2.load_model
(init_from='resume', for every script) and train.py. A dict of plain values and CPU tensors, read back with
torch.load(weights_only=True), so loading a checkpoint never runs code:

    model          GPT's state_dict, GPT's parameter names (lm_head.weight is wte's, tied)
    model_args     GPTConfig's fields
    optimizer      AdamW's full state_dict, or None (load_gpt2.py --out: a fresh optimizer)
    iter_num       optimizer steps taken
    best_val_loss  the lowest val loss seen
    config         train.py's whole configuration (or load_gpt2.py's arguments)
    tokenizer      {'name': 'gpt2'} or {'name': 'char', 'itos': [...]}; older files may lack it
    run_id         the torchrun job that wrote it (TORCHELASTIC_RUN_ID; train.py resumes it when torchrun
                   restarts that job), or None; older files lack it
"""

import json
import os
import pickle
import zipfile

import torch

from configurator import UserError
from model import GPTConfig

REQUIRED = ("model", "model_args")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or not ours; the message says which and what to do."""


def save_checkpoint(path, ckpt):
    """Write ckpt to path atomically: a temporary file, flushed to disk, then renamed over the old one, so a
    crash or a full disk leaves the previous checkpoint whole (and no temporary file behind)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path, mmap=False):
    """The checkpoint at path, checked; one CheckpointError for a missing, truncated or foreign file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with train.py, write GPT-2's there with "
                              f"'python load_gpt2.py gpt2 --out={path}', or use --init_from=gpt2")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # torch's own advice (weights_only=False) would run the file's code
        raise CheckpointError(f"{path} holds objects other than tensors and plain values, which a checkpoint of "
                              f"train.py never does; it is not loaded, as loading it could run code") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} cannot be read as a checkpoint; it may be truncated or corrupt "
                              f"({first[:200]})") from None
    problem = checkpoint_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path} {problem}: it is no checkpoint of train.py or load_gpt2.py")
    try:
        GPTConfig(**ckpt["model_args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_args make no GPTConfig ({e})") from None
    return ckpt


def checkpoint_problem(ckpt):
    """What makes ckpt no checkpoint of ours, or None."""
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a dict"
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        return f"lacks {' and '.join(missing)}"
    not_dicts = [f"{k} is a {type(ckpt[k]).__name__}" for k in REQUIRED if not isinstance(ckpt[k], dict)]
    if not_dicts:
        return f"holds entries of the wrong kind ({', '.join(not_dicts)}, not a dict)"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        return "has a model entry that is not a dict of named tensors"
    if "iter_num" in ckpt and (type(ckpt["iter_num"]) is not int or ckpt["iter_num"] < 0):
        return f"has iter_num={ckpt['iter_num']!r}, not a count of steps"
    if "tokenizer" in ckpt and not isinstance(ckpt["tokenizer"], dict):
        return f"has tokenizer={ckpt['tokenizer']!r}, not a dict"
    return None


def checkpoint_tokenizer(ckpt, path):
    """The checkpoint's tokenizer spec, else the one in its data directory's meta.json."""
    if "tokenizer" in ckpt:
        return ckpt["tokenizer"]
    run = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    data_dir = run.get("data_dir") or (os.path.join("data", run["dataset"]) if run.get("dataset") else None)
    meta = os.path.join(data_dir, "meta.json") if data_dir else None
    if meta and os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                spec = json.load(f).get("tokenizer")
        except (ValueError, AttributeError):
            spec = None
        if isinstance(spec, dict):
            return spec
    raise CheckpointError(f"{path} names no tokenizer, and there is no meta.json with one "
                          + (f"at {meta}" if meta else "(its config names no data_dir or dataset)"))
