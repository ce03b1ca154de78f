"""
Sample text from OpenAI's GPT-2 or from a model trained with train.py.

    python sample.py                                    # GPT-2 124M, downloaded on first use
    python sample.py --init_from=gpt2-xl --start="The meaning of life is" --num_samples=3
    python sample.py --init_from=resume --out_dir=out-shakespeare-char
    python sample.py --start=FILE:prompt.txt --temperature=0 --swa=True --window_size=128

Options are `--key=value` overrides and config files, the same mechanism as train.py's (configurator.py);
DEFAULTS below lists them. One sample streams to the terminal as it is generated; several are generated
as one batch and printed in turn. The text goes to stdout, everything else to stderr.
"""

import codecs
import os
import sys

import tiktoken
import torch

from configurator import ConfigError, auto_device, auto_generation_dtype, exit_with_error, load_config
from load_gpt2 import DownloadError, LoadError, apply_overrides, build_model, load_gpt2, read_json, short
from model import GPTConfig, column_major_weights_

DEFAULTS = dict(
    init_from="gpt2",     # gpt2, gpt2-medium, gpt2-large, gpt2-xl, resume (out_dir/ckpt.pt), or a Hugging Face-format path
    out_dir="out",
    start="Hello, I'm a language model,",  # the prompt: text, or FILE:path. "" samples unconditionally: from
                          # GPT-2's <|endoftext|> token, or a newline for a character-level model
    num_samples=1,
    max_new_tokens=200,
    temperature=0.8,      # 0 is greedy
    top_k=200,            # keep the k most likely tokens; None keeps all
    top_p=None,           # nucleus sampling, e.g. 0.9; None is off
    seed=1337,
    device="auto",        # auto: cuda, then mps, then cpu
    dtype="auto",         # float32 (exactly GPT-2's numerics), bfloat16 or float16; auto: bfloat16 on CUDA that
                          # supports it and on a CPU that computes it natively (configurator.py), else float32
    compile=False,        # torch.compile the model: slow to start, faster per token on a GPU
    use_cache=True,       # the KV cache: each new token costs one position instead of the whole context
    # changes to the trained model (see load_gpt2.apply_overrides); None keeps the checkpoint's
    swa=None, window_size=None, gqa=None, n_kv_head=None, block_size=None,
)
OVERRIDE_KEYS = ("swa", "window_size", "gqa", "n_kv_head", "block_size")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------------
# Model and tokenizer

def load_model(config):
    """(model, tokenizer spec) for init_from: a GPT-2 name or path through load_gpt2, or out_dir/ckpt.pt."""
    overrides = {k: config[k] for k in OVERRIDE_KEYS if config[k] is not None}
    if config["init_from"] == "resume":
        return load_resume(os.path.join(config["out_dir"], "ckpt.pt"), overrides)
    return load_gpt2(config["init_from"], **overrides), {"name": "gpt2"}


def load_resume(path, overrides):
    """(model, tokenizer spec) of a checkpoint written by train.py or load_gpt2.py --out."""
    if not os.path.isfile(path):
        raise LoadError(f"no checkpoint at {path}: train one with train.py, write GPT-2's there with "
                        f"'python load_gpt2.py gpt2 --out={path}', or use --init_from=gpt2")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file fails in many ways: zip, unpickler, EOF
        raise LoadError(f"{path} cannot be read as a checkpoint; it may be truncated or corrupt ({short(e)})") from None
    missing = [k for k in ("model", "model_args") if not isinstance(ckpt, dict) or not isinstance(ckpt.get(k), dict)]
    if missing:
        raise LoadError(f"{path} lacks {' and '.join(missing)}: it is no checkpoint of train.py or load_gpt2.py")
    try:
        config = GPTConfig(**ckpt["model_args"])
    except (TypeError, ValueError) as e:
        raise LoadError(f"{path}: its model_args make no GPTConfig ({e})") from None
    sd = {k: v for k, v in ckpt["model"].items() if k != "lm_head.weight"}  # lm_head is wte
    sd, config = apply_overrides(sd, config, overrides, source=path)
    return build_model(sd, config, path), tokenizer_spec(ckpt, path)


def tokenizer_spec(ckpt, path):
    """The checkpoint's tokenizer, else the one in its data directory's meta.json."""
    if "tokenizer" in ckpt:
        return ckpt["tokenizer"]
    run = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    data_dir = run.get("data_dir") or (os.path.join("data", run["dataset"]) if run.get("dataset") else None)
    meta = os.path.join(data_dir, "meta.json") if data_dir else None
    if meta and os.path.isfile(meta) and "tokenizer" in read_json(meta):
        return read_json(meta)["tokenizer"]
    raise LoadError(f"{path} names no tokenizer, and there is no meta.json with one "
                    + (f"at {meta}" if meta else "(its config names no data_dir or dataset)"))


class Tokenizer:
    """
    Text <-> token ids for a tokenizer spec: {'name': 'gpt2'} is GPT-2's BPE through tiktoken,
    {'name': 'char', 'itos': [one-character strings]} a character-level vocabulary. Each token id maps to
    bytes, decoded incrementally, because a BPE token may hold part of a UTF-8 character.
    """

    def __init__(self, spec):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name == "gpt2":
            try:
                enc = tiktoken.get_encoding("gpt2")
            except Exception as e:  # tiktoken fetches its two files on first use
                raise LoadError(f"GPT-2's BPE files could not be loaded ({short(e)}); tiktoken downloads them once "
                                f"from openaipublic.blob.core.windows.net, or reads them from $TIKTOKEN_CACHE_DIR") from None
            self.pieces = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
            self.encode = lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})
            self.empty_prompt = [enc.eot_token]
        elif name == "char" and isinstance(spec.get("itos"), list) and all(isinstance(c, str) for c in spec["itos"]):
            itos = spec["itos"]
            self.stoi = {c: i for i, c in enumerate(itos)}
            self.pieces = [c.encode("utf-8") for c in itos]
            self.encode = self.encode_chars
            self.empty_prompt = [self.stoi.get("\n", 0)]
        else:
            raise LoadError(f"unknown tokenizer {spec!r}: expected {{'name': 'gpt2'}} or {{'name': 'char', 'itos': [...]}}")
        self.vocab_size = len(self.pieces)

    def encode_chars(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ConfigError(f"the prompt has characters outside the model's vocabulary of {len(self.stoi)}: "
                              + ", ".join(map(repr, unknown)))
        return [self.stoi[c] for c in text]

    def stream_decoder(self):
        """A function: token ids -> the text they complete; a split UTF-8 character waits for the next call,
        final=True flushes. Ids past the vocabulary (a padded embedding's unused rows) decode to U+FFFD."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        piece = lambda i: self.pieces[i] if i < len(self.pieces) else "\ufffd".encode()
        return lambda ids, final=False: utf8.decode(b"".join(map(piece, ids)), final=final)

    def decode(self, ids):
        return self.stream_decoder()(ids, final=True)


# ----------------------------------------------------------------------------------------------------
# Sampling

def check_config(c):
    """Mistakes in the options, found before a model is loaded (or downloaded)."""
    if c["num_samples"] < 1:
        raise ConfigError(f"num_samples={c['num_samples']} must be at least 1")
    if c["max_new_tokens"] < 0:
        raise ConfigError(f"max_new_tokens={c['max_new_tokens']} must be >= 0")
    if c["temperature"] < 0:
        raise ConfigError(f"temperature={c['temperature']} must be >= 0 (0 is greedy)")
    if c["top_k"] is not None and c["top_k"] < 1:
        raise ConfigError(f"top_k={c['top_k']!r} must be a positive integer or None")
    top_p = c["top_p"]
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p={c['top_p']!r} must be in (0, 1], or None")
    if c["dtype"] not in ("auto", *DTYPES):
        raise ConfigError(f"dtype={c['dtype']!r} must be auto, {', '.join(DTYPES)}")
    if c["device"] != "auto":
        try:
            kind = torch.device(c["device"]).type
        except RuntimeError:
            raise ConfigError(f"device={c['device']!r} is no device: use auto, cpu, cuda, cuda:1 or mps") from None
        if kind == "cuda" and not torch.cuda.is_available() or kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"device={c['device']} is not available on this machine: use --device=auto")


def prompt_ids(start, tokenizer, block_size):
    """The prompt's token ids (start is text or FILE:path), cropped with a warning to the model's context."""
    text = start
    if start.startswith("FILE:"):
        try:
            with open(start[len("FILE:"):], encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"start={start}: cannot read the prompt file ({e})") from None
        if not text:
            raise ConfigError(f"start={start}: the prompt file is empty (--start='' samples unconditionally)")
    ids = tokenizer.encode(text) if text else tokenizer.empty_prompt
    if len(ids) > block_size:
        print(f"warning: the prompt has {len(ids)} tokens, more than the model's context of {block_size}; "
              f"keeping its last {block_size}", file=sys.stderr)
        ids = ids[-block_size:]
    return ids


def generate(model, tokenizer, ids, c, device):
    """Print num_samples continuations of the prompt ids: one streams token by token, several come as a batch."""
    x = torch.tensor([ids] * c["num_samples"], dtype=torch.long, device=device)  # (num_samples, T)
    args = dict(max_new_tokens=c["max_new_tokens"], temperature=c["temperature"], top_k=c["top_k"],
                top_p=c["top_p"], use_cache=c["use_cache"],
                generator=torch.Generator(device=device).manual_seed(c["seed"]))
    prompt = tokenizer.decode(ids) if c["start"] else ""  # what the model saw, so a cropped prompt shows cropped
    if c["num_samples"] == 1:
        decode = tokenizer.stream_decoder()
        print(prompt, end="", flush=True)
        for token in model.generate_tokens(x, **args):       # (1, 1)
            print(decode(token[0].tolist()), end="", flush=True)
        print(decode([], final=True))
        return
    y = model.generate(x, **args)                             # (num_samples, T + max_new_tokens)
    for row in y[:, len(ids):].tolist():
        print(prompt + tokenizer.decode(row))
        print("---------------")


def sample(c):
    check_config(c)
    device = auto_device() if c["device"] == "auto" else c["device"]
    dtype = auto_generation_dtype(device) if c["dtype"] == "auto" else c["dtype"]
    model, spec = load_model(c)
    tokenizer = Tokenizer(spec)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise LoadError(f"the model's vocab_size={model.config.vocab_size} is smaller than its tokenizer's "
                        f"{tokenizer.vocab_size} tokens: the two do not belong together")
    # the weights themselves in dtype: decoding reads each once per token, so fewer bytes are more tokens/s
    model.eval().to(device=device, dtype=DTYPES[dtype])
    if device == "cpu" and dtype == "float32":
        column_major_weights_(model)  # faster fp32 matrix-vector products on a CPU (see model.py); slower in bf16
    if c["compile"]:  # forward in place, so generate's calls use it; CUDA graphs on CUDA
        model.compile(mode="reduce-overhead" if device.startswith("cuda") else None)
    ids = prompt_ids(c["start"], tokenizer, model.config.block_size)
    print(f"{c['init_from']}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} ({dtype})",
          file=sys.stderr)
    with torch.no_grad():
        generate(model, tokenizer, ids, c, device)


def main(argv=None):
    try:
        sample(load_config(DEFAULTS, argv))
    except (ConfigError, LoadError, DownloadError) as e:
        exit_with_error(e)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
