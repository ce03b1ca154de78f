"""
Speed of model.py: generation tokens/s with and without the KV cache, and training tokens/s.

    python bench.py                                   # GPT-2 124M, fp32, batch 1, 16-token prompt, 128 new
    python bench.py --compare_hf=True                 # transformers' GPT2LMHeadModel on the same workload
    python bench.py --n_layer=4 --rope=True --gqa=True --swa=True --device=cuda --dtype=bfloat16 --compile=True

Weights are random (speed does not depend on them); every switch of GPTConfig is a key here. Generation is
greedy so that no run stops early and every run does the same work.
"""

import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch

from configurator import DTYPES, UserError, exit_with_error, load_config, pick_device
from model import GPT, GPTConfig, column_major_weights_

DEFAULTS = dict(
    asdict(GPTConfig(vocab_size=50257)),  # GPT-2 124M as OpenAI shipped it
    batch_size=1, prompt_len=16, max_new_tokens=128,   # generation workload
    train_batch_size=4, train_seq_len=256, train_steps=3,  # training workload (one optimizer step each)
    device="auto", dtype="float32", compile=False, compare_hf=False, seed=1337,
)


def timed(fn, device):
    """Seconds that fn() takes, waiting for the device to finish."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_generation(model, prompt, new_tokens, use_cache, device, autocast):
    with autocast:
        model.generate(prompt, 4, temperature=0.0, use_cache=use_cache)  # warm-up (and compile)
        seconds = timed(lambda: model.generate(prompt, new_tokens, temperature=0.0, use_cache=use_cache), device)
    return prompt.size(0) * new_tokens / seconds


def bench_hf_generation(model, prompt, new_tokens, use_cache, device):
    """transformers' GPT2LMHeadModel with the same weights, on the same workload."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head)).to(device).eval()
    from load_gpt2 import CONV1D_WEIGHTS
    ours = model.state_dict()
    hf.load_state_dict({k: (ours[k].t() if k.endswith(CONV1D_WEIGHTS) else ours[k]).contiguous()
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


def main():
    try:
        cfg = load_config(DEFAULTS)
        config = GPTConfig(**{f.name: cfg[f.name] for f in fields(GPTConfig)})
        device = str(pick_device(cfg["device"]))
    except (UserError, ValueError) as e:
        exit_with_error(str(e))
    dtype = DTYPES.get(cfg["dtype"])
    if dtype is None:
        exit_with_error(f"dtype={cfg['dtype']!r} must be {', '.join(DTYPES)}")
    if cfg["prompt_len"] + cfg["max_new_tokens"] > config.block_size:
        exit_with_error(f"prompt_len + max_new_tokens = {cfg['prompt_len'] + cfg['max_new_tokens']} must fit "
                        f"in block_size={config.block_size}")
    if cfg["compare_hf"] and (config.rope or config.gqa or config.swa):
        exit_with_error("compare_hf=True compares plain GPT-2: turn rope, gqa and swa off")
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device.split(":")[0], dtype=dtype)
    torch.manual_seed(cfg["seed"])
    print(f"device {device}, dtype {cfg['dtype']}, compile {cfg['compile']}, {config}")

    model = GPT(config).to(device).eval()
    if device == "cpu":
        column_major_weights_(model)  # as sample.py does for generation on a CPU
    if cfg["compile"]:
        model.forward = torch.compile(model.forward, dynamic=True)
    prompt = torch.randint(config.vocab_size, (cfg["batch_size"], cfg["prompt_len"]), device=device)
    workload = f"batch {cfg['batch_size']}, {cfg['prompt_len']}-token prompt, {cfg['max_new_tokens']} new tokens"
    for use_cache in (True, False):
        rate = bench_generation(model, prompt, cfg["max_new_tokens"], use_cache, device, autocast)
        line = f"generate, {'with' if use_cache else 'without'} cache: {rate:8.1f} tokens/s"
        if cfg["compare_hf"]:
            hf_rate = bench_hf_generation(model, prompt, cfg["max_new_tokens"], use_cache, device)
            line += f"   (transformers GPT2LMHeadModel: {hf_rate:.1f} tokens/s)"
        print(f"{line}   [{workload}]")
    rate = bench_training(config, cfg, device, autocast)
    print(f"train (forward, backward, AdamW step): {rate:8.1f} tokens/s   "
          f"[batch {cfg['train_batch_size']} x {cfg['train_seq_len']} tokens]")


if __name__ == "__main__":
    main()
