"""
Speed of model.py: generation tokens/s with and without the KV cache (and how much of a decode step is its matrix
products alone), and training tokens/s.

    python bench.py                                   # GPT-2 124M, batch 1, 16-token prompt, 128 new tokens
    python bench.py --dtype=float32                   # generation in float32 (auto: as sample.py chooses)
    python bench.py --quantize=int8                   # generation with int8 weights (bfloat16 activations)
    python bench.py --compare_hf=True                 # transformers' GPT2LMHeadModel on the same workload
    python bench.py --n_layer=4 --rope=True --gqa=True --swa=True --device=cuda --dtype=bfloat16 --compile=True
    python bench.py --compile=True                    # eager, then compiled: generation and training (minutes on a CPU)
    python bench.py --compile=True --n_layer=4 --n_head=4 --n_embd=128   # small: Python overhead dominates
    python bench.py --switches=True                   # the switches side by side: memory, prefill, decode, training
    python bench.py --long_swa=True                   # SWA at T=8192 (attention) and 4096 (training): 3 ways

Weights are random (speed does not depend on them); every switch of GPTConfig is a key here. Generation is
greedy so that no run stops early and every run does the same work.
"""

import itertools
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F

from configurator import DTYPES, UserError, exit_with_error, load_config, pick_device, pick_dtype
import model as model_py
from model import (GPT, GPTConfig, KVCache, attention_mask, prepare_for_generation_, quantize_problem,
                   sliding_window_attention)

DEFAULTS = dict(
    asdict(GPTConfig(vocab_size=50257)),  # GPT-2 124M as OpenAI shipped it
    batch_size=1, prompt_len=16, max_new_tokens=128,   # generation workload
    train_batch_size=4, train_seq_len=256, train_steps=3,  # training workload (one optimizer step each; 0: none)
    device="auto", dtype="auto", quantize=None, compile=False, compare_hf=False, seed=1337,
    long_swa=False,  # instead: SWA over long sequences, chunked (model.py) vs a dense mask vs full causal
    switches=False,  # instead: one table, a row for each combination of rope, gqa and swa (GPT-2 124M-sized)
)




def timed(fn, device):
    """Seconds that fn() takes, waiting for the device to finish."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_generation(model, prompt, new_tokens, use_cache, device, compiled=False):
    """(seconds to the first token, decode tokens/s after it), for greedy generation of new_tokens."""
    # warm-up; compiling needs the same lengths as the run (the cache's size is one)
    model.generate(prompt, new_tokens if compiled else 4, temperature=0.0, use_cache=use_cache)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    tokens = model.generate_tokens(prompt, new_tokens, temperature=0.0, use_cache=use_cache)
    next(tokens)
    sync()
    first = time.perf_counter()
    for _ in tokens:
        pass
    sync()
    return first - start, prompt.size(0) * (new_tokens - 1) / (time.perf_counter() - first)


def linear_layers(model):
    """The model's weight matrices as a decode step meets them: every Linear, lm_head's included, float or int8."""
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, model_py.Int8Linear))]


def weight_bytes_per_token(model):
    """Bytes of the matrices (with scales and biases) that one decode step reads: every Linear's, lm_head's
    included. The embeddings' lookups read a row each and the KV cache grows with the context: not counted."""
    tensors = [t for m in linear_layers(model) for t in (m.weight, getattr(m, "scales", None), m.bias)
               if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def matrix_products_seconds(model, batch_size, device, repeats=10):
    """Seconds of one decode step's matrix products alone: every Linear of the model once (Int8Linears too), on
    batch_size rows of one token each, as the step calls them. The rest of a step is attention, norms, sampling
    and each op's own cost; this part is what the weights' kernels give, the floor of an eager step."""
    linears = linear_layers(model)
    dtype = model.transformer.wte.weight.dtype
    rows = [torch.randn(batch_size, 1, m.weight.size(1), device=device, dtype=dtype) for m in linears]
    step = lambda: [m(x) for m, x in zip(linears, rows)]
    step()
    return timed(lambda: [step() for _ in range(repeats)], device) / repeats


def generation_line(name, ttft, rate, weight_bytes, batch_size):
    return (f"{name}: first token {1000 * ttft:6.1f} ms, decode {rate:7.1f} tokens/s, {weight_bytes / 1e6:.0f} MB "
            f"of weights per token = {weight_bytes * rate / batch_size / 1e9:.1f} GB/s")


def bench_hf_generation(model, prompt, new_tokens, use_cache, device):
    """transformers' GPT2LMHeadModel with the same weights, on the same workload."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head)).to(device).eval()
    from load_gpt2 import CONV1D_WEIGHTS as conv1d
    ours = model.state_dict()
    hf.load_state_dict({k: (ours[k].t() if k.endswith(conv1d) else ours[k]).contiguous()
                        for k in hf.state_dict() if k in ours}, strict=False)
    args = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
                pad_token_id=0, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        hf.generate(prompt, **dict(args, max_new_tokens=4, min_new_tokens=4))
        seconds = timed(lambda: hf.generate(prompt, **args), device)
    return prompt.size(0) * new_tokens / seconds


def bench_training(config, cfg, device, autocast):
    model = GPT(config).to(device).train()
    if cfg["compile"]:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(config.vocab_size, (cfg["train_batch_size"], cfg["train_seq_len"]), device=device)

    def step():
        with autocast:
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (and compile)
    seconds = timed(lambda: [step() for _ in range(cfg["train_steps"])], device)
    return cfg["train_steps"] * x.numel() / seconds


def dense_window_attention(q, k, v, window_size, dropout_p=0.0):
    """SWA as a dense (T, T) mask: the same values as sliding_window_attention, at O(T^2) cost."""
    pos = torch.arange(q.size(2), device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(pos, pos, window_size),
                                          dropout_p=dropout_p, enable_gqa=k.size(1) != q.size(1))


def bench_long_swa(device, repeats=3):
    """Attention alone (T=8192, window 256, B=1, 4 heads of 32, forward and backward), then training a small
    model at block 4096, window 256: full causal attention, SWA with a dense mask, SWA in chunks. Best of repeats."""
    T, W = 8192, 256
    q, k, v = (torch.randn(1, 4, T, 32, device=device, requires_grad=True) for _ in range(3))
    ways = {"full causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "SWA, dense mask": lambda: dense_window_attention(q, k, v, W),
            "SWA, chunked": lambda: sliding_window_attention(q, k, v, W)}
    for name, attend in ways.items():
        ms = 1000 * min(timed(lambda: attend().sum().backward(), device) for _ in range(repeats))
        print(f"attention T={T} window {W}, B=1, 4 heads of 32, forward+backward, {name:16s}: {ms:8.1f} ms")
    cfg = dict(train_batch_size=1, train_seq_len=4096, train_steps=repeats, compile=False)
    small = dict(block_size=4096, vocab_size=256, n_layer=4, n_head=4, n_embd=128, window_size=W)
    for name, swa, attention in [("full causal", False, sliding_window_attention),
                                 ("SWA, dense mask", True, dense_window_attention),
                                 ("SWA, chunked", True, sliding_window_attention)]:
        model_py.sliding_window_attention = attention  # what CausalSelfAttention calls under SWA
        rate = bench_training(GPTConfig(**small, swa=swa), cfg, device, nullcontext())
        print(f"train block 4096, 4 layers of 128, 4 heads, vocab 256, {name:16s}: {rate:8.1f} tokens/s")
    model_py.sliding_window_attention = sliding_window_attention


@torch.no_grad()
def bench_context(model, context, new_tokens, device):
    """(ms to prefill context tokens without a cache, tokens/s decoding after context tokens in the cache)"""
    idx = torch.randint(model.config.vocab_size, (1, context), device=device)
    model(idx[:, :16], last_only=True)  # warm-up
    prefill_ms = 1000 * timed(lambda: model(idx, last_only=True), device)
    cache = KVCache(model.config, 1, device, model.transformer.wte.weight.dtype, max_len=context + new_tokens)
    model(idx[:, :context - 4], cache=cache, last_only=True)
    for t in range(context - 4, context):  # warm-up, up to context tokens in the cache
        model(idx[:, t:t + 1], cache=cache)
    token = idx[:, -1:]
    seconds = timed(lambda: [model(token, cache=cache) for _ in range(new_tokens)], device)
    return prefill_ms, new_tokens / seconds


def bench_switches(cfg, device, gen_dtype, autocast):
    """One row per combination of rope, gqa and swa on GPT-2 124M's shape."""
    print(f"GPT-2 124M-sized (12 layers, 12 heads, 768 wide), gqa: n_kv_head=4, swa: window 256; generation in "
          f"{gen_dtype}, training batch {cfg['train_batch_size']} x {cfg['train_seq_len']}")
    print("| rope | gqa | swa | parameters | KV cache bytes/token | prefill 1024 tokens | decode after 1000 tokens "
          "| training |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rope, gqa, swa in itertools.product([False, True], repeat=3):
        config = GPTConfig(vocab_size=50257, rope=rope, gqa=gqa, swa=swa)
        torch.manual_seed(cfg["seed"])
        model = prepare_for_generation_(GPT(config), device, DTYPES[gen_dtype])
        params = sum(p.numel() for p in model.parameters())
        cache = KVCache(config, 1, "meta", model.transformer.wte.weight.dtype)
        per_token = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() // cache.k.size(3)
        kv = f"{per_token:,}" + (f" (at most {config.window_size} tokens)" if swa else "")
        prefill_ms, decode_rate = bench_context(model, 1000, 8, device)
        del model
        train_rate = bench_training(config, dict(cfg, compile=False), device, autocast)
        flag = lambda b: "on" if b else ""
        print(f"| {flag(rope)} | {flag(gqa)} | {flag(swa)} | {params / 1e6:.1f}M | {kv} | {prefill_ms:.0f} ms "
              f"| {decode_rate:.1f} tokens/s | {train_rate:.0f} tokens/s |", flush=True)


def main():
    try:
        cfg = load_config(DEFAULTS)
        config = GPTConfig(**{f.name: cfg[f.name] for f in fields(GPTConfig)})
        device = pick_device(cfg["device"])
        # generation casts the weights, as sample.py does; training keeps float32 weights under autocast, as train.py
        gen_dtype = pick_dtype(cfg["dtype"], device, generation=True)
        train_dtype = DTYPES[pick_dtype(cfg["dtype"], device)]
    except (UserError, ValueError) as e:
        exit_with_error(str(e))
    problem = quantize_problem(cfg["quantize"], device.type, gen_dtype)
    if problem:
        exit_with_error(problem)
    if cfg["quantize"] and cfg["compare_hf"]:
        exit_with_error("compare_hf=True compares float weights: leave quantize=None")
    device = str(device)
    if cfg["max_new_tokens"] < 2:
        exit_with_error(f"max_new_tokens={cfg['max_new_tokens']} must be at least 2: the first token, then decoding")
    if cfg["prompt_len"] + cfg["max_new_tokens"] > config.block_size:
        exit_with_error(f"prompt_len + max_new_tokens = {cfg['prompt_len'] + cfg['max_new_tokens']} must fit "
                        f"in block_size={config.block_size}")
    if cfg["train_steps"] < 0:
        exit_with_error(f"train_steps={cfg['train_steps']} must be >= 0 (0 leaves training out)")
    if cfg["compare_hf"] and (config.rope or config.gqa or config.swa):
        exit_with_error("compare_hf=True compares plain GPT-2: turn rope, gqa and swa off")
    autocast = nullcontext() if train_dtype == torch.float32 else \
        torch.autocast(device.split(":")[0], dtype=train_dtype)
    torch.manual_seed(cfg["seed"])
    if cfg["long_swa"]:
        return bench_long_swa(device)
    if cfg["switches"]:
        return bench_switches(cfg, device, gen_dtype, autocast)
    print(f"device {device}, dtype {gen_dtype} (generation) {str(train_dtype)[6:]} (training), "
          f"quantize {cfg['quantize']}, compile {cfg['compile']}, {config}")

    model = prepare_for_generation_(GPT(config), device, DTYPES[gen_dtype], cfg["quantize"])  # as sample.py's
    weight_bytes = weight_bytes_per_token(model)
    prompt = torch.randint(config.vocab_size, (cfg["batch_size"], cfg["prompt_len"]), device=device)
    workload = f"batch {cfg['batch_size']}, {cfg['prompt_len']}-token prompt, {cfg['max_new_tokens']} new tokens"
    for use_cache in (True, False):
        ttft, rate = bench_generation(model, prompt, cfg["max_new_tokens"], use_cache, device)
        line = generation_line(f"generate, {'with' if use_cache else 'without'} cache", ttft, rate, weight_bytes,
                               cfg["batch_size"])
        if cfg["compare_hf"]:
            hf_rate = bench_hf_generation(model, prompt, cfg["max_new_tokens"], use_cache, device)
            line += f"   (transformers GPT2LMHeadModel, float32: {hf_rate:.1f} tokens/s)"
        print(f"{line}   [{workload}]")
        if use_cache:
            products = matrix_products_seconds(model, cfg["batch_size"], device)
            print(f"decode step's matrix products alone: {1000 * products:.1f} ms = {weight_bytes / products / 1e9:.1f}"
                  f" GB/s, of the step's {1000 * cfg['batch_size'] / rate:.1f} ms (the rest: attention, norms, each "
                  f"op's cost)")
    if cfg["compile"]:  # in place, as sample.py does: one graph for prefill, one for every decode step
        model.compile(mode="reduce-overhead" if device.startswith("cuda") else None)
        ttft, rate = bench_generation(model, prompt, cfg["max_new_tokens"], True, device, compiled=True)
        print(f"{generation_line('generate, with cache, compiled', ttft, rate, weight_bytes, cfg['batch_size'])}   "
              f"[{workload}]")
    if cfg["train_steps"] > 0:  # 0: generation only
        rate = bench_training(config, dict(cfg, compile=False), device, autocast)
        line = f"train (forward, backward, AdamW step): {rate:8.1f} tokens/s"
        if cfg["compile"]:  # the first step compiles; the steps timed after it reuse its graph
            line += f", compiled {bench_training(config, cfg, device, autocast):.1f} tokens/s"
        print(f"{line}   [batch {cfg['train_batch_size']} x {cfg['train_seq_len']} tokens]")


if __name__ == "__main__":
    main()
