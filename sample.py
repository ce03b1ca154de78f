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
import sys

import tiktoken
import torch

from configurator import DTYPES, ConfigError, UserError, exit_with_error, load_config, pick_device, pick_dtype
from download import short
from load_gpt2 import LoadError, load_model
from model import generate_args_problem, prepare_for_generation_, quantize_problem

DEFAULTS = dict(
    init_from="gpt2",     # gpt2, gpt2-medium, gpt2-large, gpt2-xl, resume (out_dir/ckpt.pt), or a Hugging Face-format path
    out_dir="out",        # with init_from=resume: the training run's folder, holding ckpt.pt
    start=None,           # the prompt: text or FILE:path; None: GPT-2's default or a newline (characters); "": none
    num_samples=1,        # several are generated as one batch
    max_new_tokens=200,   # tokens to generate after the prompt
    temperature=0.8,      # 0 is greedy
    top_k=200,            # keep the k most likely tokens; None keeps all
    top_p=None,           # nucleus sampling, e.g. 0.9; None is off
    seed=1337,            # the same seed and options give the same text
    device="auto",        # auto: cuda, then mps, then cpu
    dtype="auto",         # auto: bfloat16 on CUDA and on a CPU with fast bf16 kernels, else float32 (GPT-2's exact numerics)
    quantize=None,        # int8: weight-only int8 weights, half of bfloat16's bytes per token (model.quantize_int8_)
    compile=False,        # torch.compile the model: slow to start, faster per token on a GPU
    use_cache=True,       # the KV cache: each new token costs one position instead of the whole context
    # changes to the trained model (see load_gpt2.apply_overrides); None keeps the checkpoint's
    swa=None, window_size=None, gqa=None, n_kv_head=None, block_size=None,
)
OVERRIDE_KEYS = ("swa", "window_size", "gqa", "n_kv_head", "block_size")
MAX_PROMPT_CHARS = 1_000_000


# ----------------------------------------------------------------------------------------------------
# Tokenizer

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
                raise LoadError(f"GPT-2's BPE files could not be loaded ({short(e)}): tiktoken downloads them once from "
                                f"openaipublic.blob.core.windows.net (run any GPT-2 command once with network), or "
                                f"reads them from $TIKTOKEN_CACHE_DIR") from None
            self.pieces = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
            self.encode = lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})
            self.empty_prompt, self.default_prompt = [enc.eot_token], "Hello, I'm a language model,"
        elif name == "char" and isinstance(spec.get("itos"), list) and all(isinstance(c, str) for c in spec["itos"]):
            itos = spec["itos"]
            self.stoi = {c: i for i, c in enumerate(itos)}
            self.pieces = [c.encode("utf-8") for c in itos]
            self.encode = self.encode_chars
            self.empty_prompt, self.default_prompt = [self.stoi.get("\n", 0)], "\n"  # as nanoGPT
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

def check_sampling_options(c):
    """Mistakes in the options, found before a model is loaded (or downloaded); the device and dtype to sample in."""
    if c["num_samples"] < 1:
        raise ConfigError(f"num_samples={c['num_samples']} must be at least 1")
    problem = generate_args_problem(c["max_new_tokens"], c["temperature"], c["top_k"], c["top_p"])
    if problem:
        raise ConfigError(problem)
    device = pick_device(c["device"])
    dtype = pick_dtype(c["dtype"], device, generation=True)
    problem = quantize_problem(c["quantize"], device.type, dtype)
    if problem:
        raise ConfigError(problem)
    return device, dtype


def prompt_ids(start, tokenizer, block_size):
    """The prompt's token ids (start is text or FILE:path), cropped with a warning to the model's context."""
    text = start
    if start.startswith("FILE:"):
        try:
            with open(start[len("FILE:"):], encoding="utf-8") as f:
                text = f.read(MAX_PROMPT_CHARS + 1)  # a prompt is cropped to the context anyway: never read a device
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"start={start}: cannot read the prompt file ({e})") from None
        if len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(f"start={start}: the prompt file holds more than {MAX_PROMPT_CHARS:,} characters")
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
    prompt = tokenizer.decode(ids) if c["start"] != "" else ""  # what the model saw: a cropped prompt shows cropped
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
    device, dtype = check_sampling_options(c)
    tokenizer, tokenizer_error = None, None
    if c["init_from"] != "resume":  # GPT-2's tokenizer, before a download, so one message names all that is missing
        try:
            tokenizer = Tokenizer({"name": "gpt2"})
        except LoadError as e:
            tokenizer_error = e
    overrides = {k: c[k] for k in OVERRIDE_KEYS if c[k] is not None}
    try:
        model, spec, _ = load_model(c["init_from"], c["out_dir"], **overrides)
    except UserError as e:
        raise LoadError(f"{e}; also, {tokenizer_error}" if tokenizer_error else str(e)) from None
    if tokenizer_error:
        raise tokenizer_error
    tokenizer = tokenizer or Tokenizer(spec)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise LoadError(f"the model's vocab_size={model.config.vocab_size} is smaller than its tokenizer's "
                        f"{tokenizer.vocab_size} tokens: the two do not belong together")
    n_params = sum(p.numel() for p in model.parameters())
    prepare_for_generation_(model, device, DTYPES[dtype], c["quantize"])  # int8?, cast, packed on a CPU
    if c["compile"]:  # forward in place, so generate's calls use it; CUDA graphs on CUDA
        model.compile(mode="reduce-overhead" if device.type == "cuda" else None)
    ids = prompt_ids(tokenizer.default_prompt if c["start"] is None else c["start"], tokenizer, model.config.block_size)
    weights = f"int8 weights, {dtype} activations" if c["quantize"] else dtype
    print(f"{c['init_from']}: {n_params:,} parameters on {device} ({weights})", file=sys.stderr)
    with torch.no_grad():
        generate(model, tokenizer, ids, c, device)


def main(argv=None):
    try:
        sample(load_config(DEFAULTS, argv))
    except UserError as e:
        exit_with_error(e)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
