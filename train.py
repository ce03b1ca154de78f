"""
Train a GPT on one device, or on many under torchrun with DDP or FSDP2.

    python train.py config/train_shakespeare_char.py                                # one process
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py          # DDP on 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py --parallel=fsdp

The configuration is the defaults below, then config files and --key=value overrides (configurator.py).
Whatever the world size, an optimizer step sees the same tokens: its micro-batches are a function of
(seed, step) alone, dealt out to the ranks, so one process and N processes follow the same loss curve.
Writes out_dir/ckpt.pt (see save_checkpoint) and out_dir/log.jsonl (one JSON object per log line and eval).
"""

import gc
import json
import math
import os
import signal
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, auto_device, auto_dtype, exit_with_error, load_config
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config values: GPT-2 (124M) on FineWeb-Edu
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200  # batches per split at each eval, over all ranks
eval_only = False  # evaluate once, then exit
always_save_checkpoint = True  # False: save at an eval only when val loss improves
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), or a GPT-2 name ('gpt2', 'gpt2-medium', ...) or path
# wandb logging (optional: pip install wandb)
wandb_log = False
wandb_project = 'gpt2'
wandb_run_name = 'gpt2'
# data
dataset = 'fineweb'
data_dir = ''  # '' means data/<dataset> next to this script
gradient_accumulation_steps = 40  # micro-batches per optimizer step, counted over all ranks
batch_size = 12  # sequences per micro-batch
block_size = 1024
# model: GPTConfig's fields (model.py)
n_layer = 12
n_head = 12
n_embd = 768
vocab_size = None  # None: the data's (meta.json); GPT-2's 50257 is padded to 50304, a multiple of 64, for speed
dropout = 0.0
bias = True
rope = False
rope_theta = 10000.0
gqa = False
n_kv_head = 4
swa = False
window_size = 256
# AdamW
learning_rate = 6e-4
max_iters = 600000  # optimizer steps in all
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the gradient norm at this value; 0.0 disables
# learning rate: linear warm-up, then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000
min_lr = 6e-5
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'; torchrun: cuda:LOCAL_RANK or cpu
dtype = 'auto'  # 'auto' (bfloat16 on CUDA that supports it, else float32), 'float32', 'bfloat16', 'float16'
compile = None  # torch.compile; None: on for CUDA, off elsewhere
parallel = 'ddp'  # under torchrun: 'ddp' (replicate the model) or 'fsdp' (shard it with FSDP2)
seed = 1337
peak_flops = 0.0  # one device's peak FLOP/s for MFU; 0.0: PEAK_BF16_FLOPS for A100/H100/H200 in bfloat16
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))}
MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# dense bfloat16 tensor-core peaks from NVIDIA's data sheets; the first name found in the device's name wins
PEAK_BF16_FLOPS = [('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('A100', 312e12)]
RANK = int(os.environ.get('RANK', '0'))  # set by torchrun
MASTER = RANK == 0


def fail(message):
    """A mistake in the input: one line from rank 0, exit 1 on every rank."""
    if MASTER:
        exit_with_error(message)
    sys.exit(1)


def log(message):
    if MASTER:
        print(message, flush=True)


# -----------------------------------------------------------------------------
# data

class GPT2TrainingDataset(torch.utils.data.Dataset):
    """The windows of block_size + 1 tokens in a .bin file of token ids, read through np.memmap.
    Item i is (x, y): x the tokens i .. i+block_size-1, y the same shifted by one (next-token targets)."""

    def __init__(self, path, block_size, dtype):
        self.tokens = np.memmap(path, dtype=dtype, mode='r')
        self.block_size = block_size

    def __len__(self):
        return len(self.tokens) - self.block_size

    def __getitem__(self, i):
        window = torch.from_numpy(self.tokens[i:i + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]

    def batch(self, offsets, device):
        # every window in one fancy-indexed read of the memmap: rows offsets[b] .. offsets[b] + block_size
        windows = self.tokens[np.asarray(offsets)[:, None] + np.arange(self.block_size + 1)]
        windows = torch.from_numpy(windows.astype(np.int64))    # (B, block_size + 1)
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if device.type == 'cuda':  # pinned memory lets the copy overlap with the GPU's work
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def draw_offsets(seed, stream, step, shape, n_windows):
    """Window offsets for one step of one stream (0: training, 1: eval of train, 2: eval of val). A function
    of its arguments alone, not of the world size or of earlier steps: resumes and rank counts see the same."""
    return np.random.default_rng([seed, stream, step]).integers(0, n_windows, size=shape)


def open_data(cfg):
    """meta.json and the train and val datasets of cfg.data_dir, or one clear error."""
    prepare = os.path.join(cfg.data_dir, 'prepare.py')
    shown = os.path.relpath(prepare) if not os.path.relpath(prepare).startswith('..') else prepare
    hint = f"run python {shown} first" if os.path.isfile(prepare) else \
        "it needs train.bin, val.bin and meta.json (see data/*/prepare.py)"
    if not os.path.isdir(cfg.data_dir):
        fail(f"data directory '{cfg.data_dir}' not found: {hint}")
    paths = {name: os.path.join(cfg.data_dir, name) for name in ('meta.json', 'train.bin', 'val.bin')}
    for path in paths.values():
        if not os.path.isfile(path):
            fail(f"'{path}' not found: {hint}")
    try:
        with open(paths['meta.json'], encoding='utf-8') as f:
            meta = json.load(f)
        if not {'vocab_size', 'dtype', 'tokenizer'} <= set(meta):
            raise KeyError("it needs vocab_size, dtype and tokenizer")
        itemsize = np.dtype(meta['dtype']).itemsize
    except (ValueError, KeyError, TypeError) as e:
        fail(f"'{paths['meta.json']}' is not valid ({type(e).__name__}: {e}): {hint}")
    datasets = {}
    for split in ('train', 'val'):
        n_tokens = os.path.getsize(paths[f'{split}.bin']) // itemsize
        if n_tokens < cfg.block_size + 1:
            fail(f"{split}.bin holds {n_tokens} tokens, fewer than block_size + 1 = {cfg.block_size + 1}: "
                 f"lower block_size or use more data")
        datasets[split] = GPT2TrainingDataset(paths[f'{split}.bin'], cfg.block_size, meta['dtype'])
    return meta, datasets


# -----------------------------------------------------------------------------
# model

def read_checkpoint(path):
    """A checkpoint written by save_checkpoint (or load_gpt2.py --out), or one clear error."""
    if not os.path.isfile(path):
        fail(f"init_from='resume' but there is no checkpoint at '{path}': train first, or set out_dir")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        if not {'model', 'model_args', 'tokenizer'} <= set(ckpt):
            raise KeyError(f"it has {sorted(ckpt)}, not model, model_args and tokenizer")
        GPTConfig(**ckpt['model_args'])
    except Exception as e:  # a truncated file, a foreign pickle, missing keys: all mean the same to a person
        fail(f"'{path}' is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return ckpt


def adopt_model_config(cfg, loaded, what):
    """Take a loaded model's config into cfg. A model key the config sets (away from its default) to another
    value than the model's is a mistake, except dropout, which fine-tuning may change."""
    for key in MODEL_KEYS:
        asked = getattr(cfg, key)
        if key != 'dropout' and asked != DEFAULTS[key] and asked != loaded[key]:
            fail(f"{what} has {key}={loaded[key]!r} but the config asks for {key}={asked!r}")
        setattr(cfg, key, loaded[key] if key != 'dropout' else cfg.dropout)


def build_model(cfg, meta):
    """(model on the CPU, checkpoint or None, tokenizer) for cfg.init_from."""
    if cfg.init_from == 'scratch':
        if cfg.vocab_size is None:
            cfg.vocab_size = 50304 if meta['tokenizer'].get('name') == 'gpt2' else meta['vocab_size']
        torch.manual_seed(cfg.seed)  # every rank builds the same weights (FSDP shards them where they are)
        model, ckpt, tokenizer = GPT(GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS})), None, meta['tokenizer']
    elif cfg.init_from == 'resume':
        ckpt = read_checkpoint(os.path.join(cfg.out_dir, 'ckpt.pt'))
        adopt_model_config(cfg, ckpt['model_args'], f"the checkpoint in '{cfg.out_dir}'")
        model, tokenizer = GPT(GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS})), ckpt['tokenizer']
        try:
            model.load_state_dict(ckpt['model'])
        except RuntimeError as e:
            fail(f"the checkpoint in '{cfg.out_dir}' does not fit its own model config: {str(e).splitlines()[0]}")
    else:  # OpenAI's GPT-2, with the switches that can be converted (GQA by mean-pooling k/v heads, SWA)
        from load_gpt2 import load_gpt2
        overrides = {'dropout': cfg.dropout}
        if cfg.block_size != DEFAULTS['block_size']:
            overrides['block_size'] = cfg.block_size
        if cfg.swa:
            overrides.update(swa=True, window_size=cfg.window_size)
        if cfg.gqa:
            overrides.update(gqa=True, n_kv_head=cfg.n_kv_head)
        try:
            model = load_gpt2(cfg.init_from, **overrides)
        except (ValueError, OSError) as e:
            fail(f"init_from={cfg.init_from!r}: {e}")
        adopt_model_config(cfg, asdict(model.config), f"init_from={cfg.init_from!r}")
        ckpt, tokenizer = None, {'name': 'gpt2'}
    if tokenizer != meta['tokenizer']:
        fail(f"the model's tokenizer ({tokenizer.get('name')}) is not the data's ({meta['tokenizer'].get('name')}, "
             f"'{cfg.data_dir}/meta.json')")
    if cfg.vocab_size < meta['vocab_size']:
        fail(f"vocab_size={cfg.vocab_size} is smaller than the data's vocabulary ({meta['vocab_size']})")
    return model, ckpt, tokenizer


def flops_per_token(config, n_params):
    """Training FLOPs per token: 6 per weight (multiply-add, forward and backward) plus attention's scores and
    weighted sum, 12 * n_layer * n_head * head_dim * context (as PaLM counts it). n_params excludes position
    embeddings (a lookup), but includes the tied wte/lm_head once (lm_head is a real matmul)."""
    context = min(config.block_size, config.window_size) if config.swa else config.block_size
    return 6 * n_params + 12 * config.n_layer * config.n_head * (config.n_embd // config.n_head) * context


def device_peak_flops(cfg, device):
    if cfg.peak_flops > 0:
        return cfg.peak_flops
    if device.type == 'cuda' and cfg.dtype == 'bfloat16':
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)
    return None


# -----------------------------------------------------------------------------
# optimization

def configure_optimizer(model, cfg, device):
    """AdamW with weight decay on the 2-D weights (matmuls, embeddings) only, not on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied wte/lm_head appears once
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    fused = device.type in ('cuda', 'cpu')  # one kernel over all parameters instead of a loop, on a CPU too
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


def get_lr(it, cfg):
    """Linear warm-up for warmup_iters, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def grad_sync(model, sync):
    """Context for one micro-step's forward and backward: gradients are reduced across ranks only when sync
    is True (the last micro-step), the others just accumulate locally."""
    if isinstance(model, DDP) and not sync:
        return model.no_sync()
    if hasattr(model, 'set_requires_gradient_sync'):  # an FSDP2 module
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def all_ranks_mean(values, distributed):
    """The mean over ranks of a 1-D tensor, as a list of floats (gloo has no AVG op, so SUM and divide)."""
    if distributed:
        dist.all_reduce(values)
        values = values / dist.get_world_size()
    return values.tolist()


@torch.no_grad()
def estimate_loss(model, datasets, cfg, ctx, device, rank, world_size):
    """Mean loss of each split over the same eval_iters batches at every eval, dealt out to the ranks (rounded
    up to a multiple of the world size: under FSDP every rank must run the same number of forwards)."""
    model.eval()
    per_rank = math.ceil(cfg.eval_iters / world_size)
    out = {}
    for stream, split in ((1, 'train'), (2, 'val')):
        ds = datasets[split]
        offsets = draw_offsets(cfg.seed, stream, 0, (per_rank * world_size, cfg.batch_size), len(ds))
        losses = torch.zeros(per_rank, device=device)
        for k, batch_offsets in enumerate(offsets[rank * per_rank:(rank + 1) * per_rank]):
            x, y = ds.batch(batch_offsets, device)
            with ctx:
                _, loss = model(x, y)
            losses[k] = loss.float()
        out[split] = all_ranks_mean(losses.mean().reshape(1), world_size > 1)[0]
    model.train()
    return out


def save_checkpoint(path, model, optimizer, extra):
    """Write ckpt.pt atomically (a temporary file, then os.replace): the full model and optimizer state as plain
    CPU tensors, keyed by GPT's parameter names whatever the wrapping. Every rank must call this: under FSDP
    the full state is gathered from all of them. Rank 0 writes."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {'model': get_model_state_dict(model, options=options),
             'optimizer': get_optimizer_state_dict(model, optimizer, options=options), **extra}
    if MASTER:
        tmp = path + '.tmp'
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


# -----------------------------------------------------------------------------

def main(argv=None):
    # configuration
    try:
        cfg = SimpleNamespace(**load_config(DEFAULTS, argv))
    except ConfigError as e:
        fail(str(e))
    if not (cfg.compile is None or type(cfg.compile) is bool):
        fail(f"'compile' must be True, False or None, got {cfg.compile!r}")
    if cfg.vocab_size is not None and type(cfg.vocab_size) is not int:
        fail(f"'vocab_size' must be int or None, got {cfg.vocab_size!r}")
    for key in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'batch_size',
                'block_size'):
        if getattr(cfg, key) < 1:
            fail(f"'{key}' must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_iters < 0 or cfg.seed < 0:
        fail(f"max_iters and seed must not be negative, got {cfg.max_iters} and {cfg.seed}")
    if cfg.decay_lr and cfg.lr_decay_iters <= cfg.warmup_iters:
        fail(f"lr_decay_iters ({cfg.lr_decay_iters}) must be larger than warmup_iters ({cfg.warmup_iters})")
    if cfg.parallel not in ('ddp', 'fsdp'):
        fail(f"'parallel' must be 'ddp' or 'fsdp', got {cfg.parallel!r}")
    if cfg.wandb_log and MASTER:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True needs wandb: pip install wandb")
    cfg.data_dir = cfg.data_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', cfg.dataset)

    # distributed set-up, first part: who we are (the process group starts once every input is checked)
    distributed = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank = RANK
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if cfg.gradient_accumulation_steps % world_size:
        fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by the world size "
             f"({world_size}): it counts the micro-batches of one step over all ranks")
    micro_steps = cfg.gradient_accumulation_steps // world_size  # this rank's share of each step
    cfg.device = auto_device() if cfg.device == 'auto' else cfg.device
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        fail(f"unknown device {cfg.device!r}: use cpu, cuda, cuda:N or mps")
    if distributed and device.type not in ('cuda', 'cpu'):
        fail(f"torchrun runs on cuda or cpu, not {device.type}")
    if distributed and device.type == 'cuda':
        device = torch.device('cuda', local_rank)
    cfg.dtype = auto_dtype(device.type) if cfg.dtype == 'auto' else cfg.dtype
    if cfg.dtype not in ('float32', 'bfloat16', 'float16'):
        fail(f"'dtype' must be auto, float32, bfloat16 or float16, got {cfg.dtype!r}")
    if cfg.dtype == 'float16' and device.type == 'cpu':
        fail("dtype=float16 on a CPU is about 50x slower than float32: use float32 or bfloat16")
    if cfg.dtype == 'float16' and distributed and cfg.parallel == 'fsdp':
        fail("parallel='fsdp' trains in bfloat16 or float32 (float16 would need a sharded gradient scaler)")
    if cfg.dtype == 'bfloat16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        fail("this GPU does not support bfloat16: use dtype=float16")
    cfg.compile = device.type == 'cuda' if cfg.compile is None else cfg.compile

    # data
    meta, datasets = open_data(cfg)

    # model, on the CPU until the process group is up
    model, ckpt, tokenizer = build_model(cfg, meta)
    iter_num = ckpt.get('iter_num', 0) if ckpt else 0
    best_val_loss = ckpt.get('best_val_loss', float('inf')) if ckpt else float('inf')
    n_params = sum(p.numel() for p in model.parameters()) - (0 if cfg.rope else model.transformer.wpe.weight.numel())
    flops_token = flops_per_token(model.config, n_params)
    try:  # now, so that a bad out_dir fails before anything runs
        os.makedirs(cfg.out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.out_dir).close()
    except OSError as e:
        fail(f"out_dir '{cfg.out_dir}' cannot be written: {e.strerror or e}")

    # distributed set-up, second part: every input is fine, so the processes may now wait on each other
    if distributed:
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.fp32_precision = 'tf32'  # float32 matmuls on tensor cores
    mode = f"{cfg.parallel} under torchrun, world size {world_size}" if distributed else "one process, world size 1"
    log(f"training: {mode}, device {device}, dtype {cfg.dtype}, compile {cfg.compile}, init_from {cfg.init_from}")
    log("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in sorted(vars(cfg).items())))
    log(f"model: {n_params / 1e6:.2f}M parameters (without position embeddings), {flops_token / 1e6:.1f} MFLOPs per token")

    # the model on its device: replicated (DDP) or sharded (FSDP2), then compiled
    model.to(device)
    raw_model = model  # GPT's own parameter names, for checkpoints and the optimizer
    if cfg.compile:  # in place, so parameter names keep no _orig_mod prefix; FSDP's hooks go around Blocks
        for module in (model.transformer.h if distributed and cfg.parallel == 'fsdp' else [model]):
            module.compile()
    if distributed and cfg.parallel == 'fsdp':
        bf16_cuda = device.type == 'cuda' and cfg.dtype == 'bfloat16'
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_cuda \
            else MixedPrecisionPolicy()
        for block in model.transformer.h:
            fully_shard(block, mp_policy=mp_policy)
        fully_shard(model, mp_policy=mp_policy)  # the root: wte/lm_head (tied, so in one group), wpe, ln_f
    elif distributed:
        model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)

    # optimizer, built after sharding so that it holds the sharded parameters
    optimizer = configure_optimizer(raw_model, cfg, device)
    if ckpt and ckpt.get('optimizer'):  # None in a checkpoint of load_gpt2.py --out: a fresh optimizer
        set_optimizer_state_dict(raw_model, optimizer, ckpt['optimizer'], options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=distributed))
    ckpt = None  # free the memory
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == 'float16')
    ctx = nullcontext() if cfg.dtype == 'float32' else torch.autocast(device.type, dtype=getattr(torch, cfg.dtype))

    # logging
    log_file = open(os.path.join(cfg.out_dir, 'log.jsonl'), 'a' if cfg.init_from == 'resume' or cfg.eval_only else 'w') \
        if MASTER else None
    if cfg.wandb_log and MASTER:
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))

    def record(entry):
        if MASTER:
            log_file.write(json.dumps(entry) + '\n')
            log_file.flush()
            if cfg.wandb_log:
                wandb.log(entry, step=entry['iter'])

    def checkpoint():
        save_checkpoint(os.path.join(cfg.out_dir, 'ckpt.pt'), raw_model, optimizer, {
            'model_args': asdict(raw_model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'config': vars(cfg), 'tokenizer': tokenizer})

    def stop_with_error(message):  # every rank gets here at the same iteration (the losses are all-reduced)
        shutdown(distributed)
        fail(message)

    # SIGINT/SIGTERM (Ctrl-C, a preemption notice): finish the step, save, exit 0; a second Ctrl-C stops at once
    stop_signal = []

    def request_stop(signum, frame):
        stop_signal.append(signum)
        signal.signal(signum, signal.SIG_DFL)

    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    # training loop
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    peak = device_peak_flops(cfg, device)
    saved_iter = iter_num  # the iteration of the weights in ckpt.pt, or of those we started from
    try:
        while True:
            if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
                losses = estimate_loss(model, datasets, cfg, ctx, device, rank, world_size)
                log(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                record({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val']})
                if not math.isfinite(losses['val']):
                    stop_with_error(f"val loss is {losses['val']} at iteration {iter_num}; ckpt.pt is left as it was")
                improved = losses['val'] < best_val_loss
                best_val_loss = min(best_val_loss, losses['val'])
                if (improved or cfg.always_save_checkpoint) and iter_num > saved_iter and not cfg.eval_only:
                    checkpoint()
                    saved_iter = iter_num
                    log(f"saved {cfg.out_dir}/ckpt.pt at iteration {iter_num}")
            if iter_num >= cfg.max_iters or cfg.eval_only:
                break

            # one optimizer step: this rank's share of the step's micro-batches
            t0 = time.time()
            lr = get_lr(iter_num, cfg)
            for group in optimizer.param_groups:
                group['lr'] = lr
            torch.manual_seed(hash((cfg.seed, iter_num, rank)) % 2**63)  # dropout masks too depend on the step only
            offsets = draw_offsets(cfg.seed, 0, iter_num, (cfg.gradient_accumulation_steps, cfg.batch_size),
                                   len(datasets['train']))
            loss_sum = torch.zeros((), device=device)
            for micro_step, batch_offsets in enumerate(offsets[rank * micro_steps:(rank + 1) * micro_steps]):
                x, y = datasets['train'].batch(batch_offsets, device)
                with grad_sync(model, micro_step == micro_steps - 1):
                    with ctx:
                        _, loss = model(x, y)
                    scaler.scale(loss / micro_steps).backward()
                loss_sum += loss.detach().float()
            grad_norm = None
            if cfg.grad_clip > 0.0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, 'full_tensor') else grad_norm  # FSDP: DTensor
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # one all-reduce per step: the loss over all ranks, and whether any rank was asked to stop
            stats = torch.stack([loss_sum / micro_steps, torch.tensor(float(bool(stop_signal)), device=device)])
            loss_value, stop = all_ranks_mean(stats, distributed)
            if not math.isfinite(loss_value):
                stop_with_error(f"loss is {loss_value} at iteration {iter_num}; ckpt.pt is left as it was "
                                f"(saved at iteration {saved_iter})")
            dt = time.time() - t0
            if iter_num % cfg.log_interval == 0:
                tokens_per_sec = tokens_per_step / dt
                mfu = flops_token * tokens_per_sec / (peak * world_size) if peak else None
                log(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                    f"{tokens_per_sec:,.0f} tokens/s" + (f", MFU {mfu * 100:.1f}%" if mfu is not None else ""))
                record({'iter': iter_num, 'loss': loss_value, 'lr': lr, 'ms': dt * 1000,
                        'tokens_per_sec': tokens_per_sec, 'mfu': mfu,
                        'grad_norm': None if grad_norm is None else grad_norm.item()})
            iter_num += 1
            if stop:
                checkpoint()
                log(f"stopped by a signal: saved {cfg.out_dir}/ckpt.pt at iteration {iter_num}")
                break
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        if MASTER:
            log_file.close()
    shutdown(distributed)


def shutdown(distributed):
    """End a distributed run cleanly: without the barrier, gloo processes sometimes abort at exit."""
    if distributed:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
