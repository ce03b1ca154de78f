"""
HellaSwag (Zellers et al. 2019) in the completion style of build-nanogpt: which of four endings continues a context?

    python hellaswag.py                                       # OpenAI's GPT-2 124M (acc_norm 0.2955 published)
    python hellaswag.py --init_from=resume --out_dir=out      # a checkpoint of train.py
    python hellaswag.py --data=hellaswag_val.jsonl --limit=500

The model reads the context followed by each ending (GPT-2 tokens, the ending with its leading space) and we
take the cross-entropy of the ending's tokens only. acc_norm picks the ending with the lowest mean loss per
token, acc the lowest summed loss (which favours short endings). The 10,042 validation examples are downloaded
once into a cache (~/.cache/hellaswag, or $HELLASWAG_CACHE) and checked, or read from --data=FILE.
train.py scores the same with hellaswag=True at each eval, the examples dealt out over the ranks.
"""

import json
import math
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

from configurator import DTYPES, ConfigError, UserError, exit_with_error, load_config, pick_device, pick_dtype
from download import download
from load_gpt2 import load_model

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
N_VAL = 10_042  # examples in the validation split; a download with another count is refused
DEFAULTS = dict(
    init_from="gpt2",  # gpt2, ..., gpt2-xl, resume (out_dir/ckpt.pt), or a Hugging Face-format path
    out_dir="out",
    data="",           # a local hellaswag_val.jsonl; '' downloads it once into the cache
    limit=0,           # score only the first `limit` examples; 0 is all
    device="auto",     # auto: cuda, then mps, then cpu
    dtype="auto",      # auto: bfloat16 on CUDA that supports it, else float32
)


class HellaSwagError(UserError, ValueError):
    """Data that cannot be read or a model that cannot be scored; the message says why."""


# ----------------------------------------------------------------------------------------------------
# Data

def cache_path():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.environ.get("HELLASWAG_CACHE") or os.path.join(cache, "hellaswag"), "hellaswag_val.jsonl")


def fetch_val_split():
    """The cached validation file, downloaded first if need be (by each process into its own file, then renamed
    into place, so ranks that start together do not collide) and checked to hold N_VAL examples."""
    path = cache_path()
    if os.path.isfile(path):
        return path
    mine = f"{path}.{os.getpid()}"
    download(URL, mine)
    try:
        read_examples(mine, expected=N_VAL)
    except HellaSwagError:
        os.remove(mine)
        raise
    os.replace(mine, path)
    return path


def read_examples(path, expected=None):
    """The examples of a HellaSwag .jsonl file (ctx, 4 endings, label), each checked."""
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                ex = json.loads(line)
                if not (isinstance(ex.get("ctx"), str) and isinstance(ex.get("endings"), list) and len(ex["endings"]) == 4
                        and all(isinstance(e, str) and e for e in ex["endings"]) and ex.get("label") in (0, 1, 2, 3)):
                    raise ValueError(f"line {n} is no HellaSwag example (ctx, 4 endings, label 0-3)")
                examples.append(ex)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HellaSwagError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if expected is not None and len(examples) != expected:
        raise HellaSwagError(f"{path} holds {len(examples):,} examples where HellaSwag's val split has {expected:,}")
    if not examples:
        raise HellaSwagError(f"{path} holds no examples")
    return examples


def render(example, encode, block_size):
    """(4 rows of token ids, where each row's ending starts, label). A row longer than block_size loses the
    start of its context."""
    context = encode(example["ctx"])
    rows, starts = [], []
    for ending in example["endings"]:
        row, start = context + encode(" " + ending), len(context)  # GPT-2's tokens carry the space before a word
        cut = max(0, len(row) - block_size)
        rows.append(row[cut:])
        starts.append(max(1, start - cut))  # the first token has no prediction to score
    return rows, starts, example["label"]


def load(tokenizer, block_size, data=""):
    """The validation examples rendered for a model with tokenizer spec tokenizer; data: a local file or ''."""
    if tokenizer.get("name") != "gpt2":
        raise HellaSwagError(f"HellaSwag is scored in GPT-2's tokens; this model's tokenizer is "
                             f"{tokenizer.get('name')!r} (a character-level model lacks most of its characters)")
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    examples = read_examples(data) if data else read_examples(fetch_val_split(), expected=N_VAL)
    return [render(ex, enc.encode_ordinary, block_size) for ex in examples]


# ----------------------------------------------------------------------------------------------------
# Scoring

def ending_losses(model, rows, starts, device, ctx):
    """(summed, mean) cross-entropy of each row's ending tokens, (4,) each; rows are padded at their end."""
    length = max(map(len, rows))
    idx = torch.zeros(len(rows), length, dtype=torch.long)
    scored = torch.zeros(len(rows), length - 1)  # scored[i, t]: does logit t (predicting token t+1) count?
    for i, (row, start) in enumerate(zip(rows, starts)):
        idx[i, :len(row)] = torch.tensor(row)
        scored[i, start - 1:len(row) - 1] = 1.0
    idx, scored = idx.to(device), scored.to(device)
    with ctx:
        logits, _ = model(idx)                                                    # (4, T, V)
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), idx[:, 1:], reduction="none")  # (4, T-1)
    summed = (losses * scored).sum(dim=1)
    return summed, summed / scored.sum(dim=1)


@torch.no_grad()
def evaluate(model, examples, device, ctx=nullcontext(), rank=0, world_size=1, progress=False):
    """{'acc_norm', 'acc', 'n'} over the rendered examples, dealt out over the ranks (every rank runs the same
    number of forwards, as FSDP needs; a rank with one example fewer repeats one, uncounted)."""
    was_training = model.training
    model.eval()
    per_rank = math.ceil(len(examples) / world_size)
    counts = torch.zeros(3, device=device)  # correct by mean loss, correct by summed loss, examples
    for k in range(per_rank):
        i = rank + k * world_size
        rows, starts, label = examples[i if i < len(examples) else 0]
        summed, mean = ending_losses(model, rows, starts, device, ctx)
        if i < len(examples):
            counts += torch.tensor([mean.argmin().item() == label, summed.argmin().item() == label, 1.0], device=device)
        if progress and (k % 20 == 0 or k == per_rank - 1):
            print(f"\rhellaswag: {int(counts[2])}/{len(examples)}, acc_norm {counts[0] / counts[2]:.4f}, "
                  f"acc {counts[1] / counts[2]:.4f}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if world_size > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    correct_norm, correct, n = counts.tolist()
    return {"acc_norm": correct_norm / n, "acc": correct / n, "n": int(n)}


# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    try:
        c = load_config(DEFAULTS, argv)
        if c["limit"] < 0:
            raise ConfigError(f"limit={c['limit']} must be >= 0 (0 scores every example)")
        device = pick_device(c["device"])
        dtype = pick_dtype(c["dtype"], device)
        model, tokenizer, _ = load_model(c["init_from"], c["out_dir"])
        examples = load(tokenizer, model.config.block_size, c["data"])
    except UserError as e:
        exit_with_error(e)
    examples = examples[:c["limit"]] if c["limit"] else examples
    model.to(device)
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=DTYPES[dtype])
    result = evaluate(model, examples, device, ctx, progress=True)
    print(f"{c['init_from']}: {result['n']} examples, acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}")


if __name__ == "__main__":
    main()
