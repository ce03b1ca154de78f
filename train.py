"""
Train a GPT on one device, or on many under torchrun with DDP or FSDP2.

    python train.py config/train_shakespeare_char.py                                # one process
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py          # DDP on 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py --parallel=fsdp

The configuration is the defaults below, then config files and --key=value overrides (configurator.py).
Whatever the world size, an optimizer step sees the same tokens: its micro-batches are a function of
(seed, step) alone, dealt out to the ranks, so one process and N processes follow the same loss curve.
Writes out_dir/ckpt.pt (checkpoint.py) and out_dir/log.jsonl (one JSON object per log line and eval).
"""

import datetime
import gc
import json
import math
import os
import shutil
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

from checkpoint import load_checkpoint, save_checkpoint
from configurator import UserError, exit_with_error, load_config, pick_device, pick_dtype
from hellaswag import HellaSwagError, evaluate as eval_hellaswag, load as load_hellaswag
from load_gpt2 import load_model
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# default config values: GPT-2 (124M) on FineWeb-Edu
# I/O
out_dir = 'out'  # ckpt.pt and log.jsonl go here
eval_interval = 2000  # evaluate (and save) every this many steps
save_interval = 0  # also save ckpt.pt every this many steps, without evaluating; 0: only at evals
log_interval = 1  # a log line every this many steps
eval_iters = 200  # batches per split at each eval, over all ranks
eval_only = False  # evaluate once, then exit
hellaswag = False  # each eval also scores HellaSwag's 10,042 val examples (acc_norm; hellaswag.py)
always_save_checkpoint = True  # False: save at an eval only when val loss improves
overwrite = False  # True: a new run (init_from other than 'resume') may replace the ckpt.pt already in out_dir
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), or a GPT-2 name ('gpt2', 'gpt2-medium', ...) or path
# wandb logging (optional: pip install wandb)
wandb_log = False  # also log to Weights & Biases (pip install wandb)
wandb_project = 'gpt2'  # W&B project
wandb_run_name = 'gpt2'  # W&B run name
# data
dataset = 'fineweb'  # data/<dataset>: train.bin, val.bin, meta.json (made by its prepare.py)
data_dir = ''  # '' means data/<dataset> next to this script
gradient_accumulation_steps = 40  # micro-batches per optimizer step, counted over all ranks
batch_size = 12  # sequences per micro-batch
block_size = 1024  # tokens of context
# model: GPTConfig's fields (model.py)
n_layer = 12  # transformer blocks
n_head = 12  # attention heads
n_embd = 768  # width of the residual stream
vocab_size = None  # None: the data's (meta.json); GPT-2's 50257 is padded to 50304, a multiple of 64, for speed
dropout = 0.0  # 0.0 for pretraining; 0.1-0.2 against overfitting a small set
bias = True  # biases in Linear and LayerNorm, as GPT-2
rope = False  # rotary position embeddings instead of learned positions (wpe)
rope_theta = 10000.0  # RoPE's base
gqa = False  # grouped-query attention: n_kv_head key/value heads
n_kv_head = 4  # key/value heads under gqa
swa = False  # sliding-window attention: each query sees the last window_size positions
window_size = 256  # the window under swa
# AdamW
learning_rate = 6e-4  # peak learning rate
max_iters = 600000  # optimizer steps in all
weight_decay = 1e-1  # on 2-D weights only
beta1 = 0.9  # AdamW's betas
beta2 = 0.95
grad_clip = 1.0  # clip the gradient norm at this value; 0.0 disables
# learning rate: linear warm-up, then cosine decay to min_lr
decay_lr = True  # False: a constant learning_rate
warmup_iters = 2000  # steps of linear warm-up
lr_decay_iters = 600000  # the step where the cosine reaches min_lr (~max_iters)
min_lr = 6e-5  # ~learning_rate / 10
# system
device = 'auto'  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'; torchrun: cuda:LOCAL_RANK or cpu
dtype = 'auto'  # 'auto' (bfloat16 on CUDA that supports it, else float32), 'float32', 'bfloat16', 'float16'
compile = None  # torch.compile; None: on for CUDA, off elsewhere
compile_backend = 'inductor'  # torch.compile's backend; 'aot_eager' traces the same graphs, runs them eagerly (tests)
parallel = 'ddp'  # under torchrun: 'ddp' (replicate the model) or 'fsdp' (shard it with FSDP2)
seed = 1337  # weights and batches follow from it
dist_timeout = 600  # torchrun: seconds a collective waits for a rank that does not answer (a lost node) before it stops
peak_flops = 0.0  # one device's peak FLOP/s for MFU; 0.0: PEAK_BF16_FLOPS for A100/H100/H200 in bfloat16
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))}
MODEL_KEYS = [f.name for f in fields(GPTConfig)]
# dense bfloat16 tensor-core peaks from NVIDIA's data sheets; the first name found in the device's name wins
PEAK_BF16_FLOPS = [('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('A100', 312e12)]
RANK = int(os.environ.get('RANK', '0'))  # set by torchrun
MASTER = RANK == 0
# torchrun's job: --standalone draws a fresh run id for each job, a multi-node job has the --rdzv-id it is given,
# and torchrun's default id 'none' names no job; the restart count is how often torchrun restarted its workers
JOB_ID = os.environ.get('TORCHELASTIC_RUN_ID', 'none')
JOB_ID = None if JOB_ID in ('', 'none') else JOB_ID
RESTART = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0'))


def fail(message):
    """A mistake in the input: one line from rank 0, exit 1 on every rank."""
    if MASTER:
        exit_with_error(message)
    sys.exit(1)


def log(message):
    if MASTER:
        print(message, flush=True)


# -----------------------------------------------------------------------------
# set-up: the configuration, then the processes

def read_config(argv):
    """The run's configuration, checked as a whole before any data or model is touched, and the checkpoint to
    resume (or None). A new run starts from the defaults; a resumed one from the configuration it saved, so
    that `--init_from=resume --out_dir=X` alone continues it. Config files and overrides apply on top.
    Workers that torchrun restarted resume the checkpoint their job saved, whatever init_from says."""
    try:
        cfg, ckpt = SimpleNamespace(**load_config(DEFAULTS, argv)), None
        path = os.path.join(cfg.out_dir, 'ckpt.pt')
        restarted = f"restart {RESTART} of torchrun job {JOB_ID or '(no run id)'}: " if RESTART else ""
        if cfg.init_from == 'resume' or not cfg.eval_only and saved_by_this_job(path):
            ckpt = load_checkpoint(path, mmap=True)
            saved = saved_config(ckpt)
            cfg = SimpleNamespace(**load_config({**DEFAULTS, **saved}, argv))
            cfg.init_from = 'resume'
            changes = [f"{k}={v!r} (was {saved[k]!r})" for k, v in vars(cfg).items() if k in saved and v != saved[k]]
            log(f"{restarted}resuming {path} at iteration {ckpt.get('iter_num', 0)} with its saved configuration"
                + (", changed: " + ", ".join(changes) if changes else ""))
    except UserError as e:
        fail(str(e))
    check_config(cfg)
    if restarted and ckpt is None:
        log(f"{restarted}it has saved no checkpoint yet, so it starts again as its command line says")
    cfg.data_dir = cfg.data_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', cfg.dataset)
    return cfg, ckpt


def saved_config(ckpt):
    """The configuration a checkpoint's run was given, less what this machine decides again: device, dtype,
    compile and its backend ('auto' and None resolve anew), data_dir where it was the dataset's default folder."""
    saved = ckpt.get('config') if isinstance(ckpt.get('config'), dict) else {}
    saved = {k: v for k, v in saved.items() if k in DEFAULTS and k not in ('init_from', 'overwrite', 'device', 'dtype',
                                                                           'compile', 'compile_backend')}
    default_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', str(saved.get('dataset')))
    if saved.get('data_dir') == default_dir:
        saved['data_dir'] = ''
    return saved


def saved_by_this_job(path):
    """Whether torchrun restarted this job's workers and path holds the checkpoint the job wrote (its run id)."""
    return RESTART > 0 and JOB_ID is not None and os.path.isfile(path) \
        and load_checkpoint(path, mmap=True).get('run_id') == JOB_ID


def check_config(cfg):
    """Every mistake a configuration can hold on its own, as one line that names the key (see fail)."""
    if not (cfg.compile is None or type(cfg.compile) is bool):
        fail(f"'compile' must be True, False or None, got {cfg.compile!r}")
    if cfg.vocab_size is not None and type(cfg.vocab_size) is not int:
        fail(f"'vocab_size' must be int or None, got {cfg.vocab_size!r}")
    for key in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'batch_size',
                'block_size'):
        if getattr(cfg, key) < 1:
            fail(f"'{key}' must be at least 1, got {getattr(cfg, key)}")
    if cfg.save_interval < 0 or cfg.dist_timeout <= 0:
        fail(f"save_interval must not be negative and dist_timeout must be positive, got {cfg.save_interval} and "
             f"{cfg.dist_timeout}")
    if cfg.save_interval and not cfg.always_save_checkpoint:
        fail(f"save_interval={cfg.save_interval} would replace the checkpoint with the best val loss that "
             f"always_save_checkpoint=False keeps: set one of --save_interval=0, --always_save_checkpoint=True")
    if cfg.max_iters < 0 or cfg.seed < 0:
        fail(f"max_iters and seed must not be negative, got {cfg.max_iters} and {cfg.seed}")
    if cfg.decay_lr and cfg.lr_decay_iters <= cfg.warmup_iters:
        fail(f"lr_decay_iters ({cfg.lr_decay_iters}) must be larger than warmup_iters ({cfg.warmup_iters})")
    if cfg.parallel not in ('ddp', 'fsdp'):
        fail(f"'parallel' must be 'ddp' or 'fsdp', got {cfg.parallel!r}")
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if cfg.gradient_accumulation_steps % world_size:
        fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by the world size "
             f"({world_size}): it counts the micro-batches of one step over all ranks")
    try:  # the model's shape, whatever the data's vocabulary turns out to be
        GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS if k != 'vocab_size'})
    except (TypeError, ValueError) as e:
        fail(str(e))
    if cfg.wandb_log and MASTER:
        try:
            import wandb  # noqa: F401
        except ImportError:
            fail("wandb_log=True needs wandb: pip install wandb")
    if cfg.init_from != 'resume' and not cfg.eval_only and not cfg.overwrite \
            and os.path.exists(os.path.join(cfg.out_dir, 'ckpt.pt')):
        if RESTART and JOB_ID is None:
            fail(f"torchrun restarted this job, but with no run id it cannot tell its own ckpt.pt in '{cfg.out_dir}' "
                 f"from an earlier run's: start torchrun with --standalone or --rdzv-id=<a unique job id>")
        fail(f"out_dir '{cfg.out_dir}' holds the ckpt.pt of an earlier run: continue it with --init_from=resume, "
             f"choose another --out_dir, or replace it with --overwrite=True")
    try:  # now, so that a bad out_dir fails before anything runs
        os.makedirs(cfg.out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.out_dir).close()
    except OSError as e:
        fail(f"out_dir '{cfg.out_dir}' cannot be written: {e.strerror or e}")


def setup_distributed(cfg):
    """Find who this process is and what it runs on: returns (distributed, rank, world size, device). Under
    torchrun (RANK and WORLD_SIZE set) it starts the process group: one device per process (cuda:LOCAL_RANK, or
    the CPU), nccl on CUDA, gloo on the CPU. Resolves cfg.device, cfg.dtype and cfg.compile for this machine."""
    distributed = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    world_size = int(os.environ['WORLD_SIZE']) if distributed else 1
    try:
        device = pick_device(cfg.device)
        cfg.dtype = pick_dtype(cfg.dtype, device)
    except UserError as e:
        fail(str(e))
    if distributed and device.type not in ('cuda', 'cpu'):
        fail(f"torchrun runs on cuda or cpu, not {device.type}")
    if cfg.dtype == 'float16' and distributed and cfg.parallel == 'fsdp':
        fail("parallel='fsdp' trains in bfloat16 or float32 (float16 would need a sharded gradient scaler)")
    cfg.device, cfg.compile = str(device), device.type == 'cuda' if cfg.compile is None else cfg.compile
    if distributed and device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    if distributed:  # keys of its own in torchrun's store: a restart must not read the addresses of dead workers
        timeout = datetime.timedelta(seconds=cfg.dist_timeout)
        store, _, _ = next(dist.rendezvous('env://', RANK, world_size, timeout=timeout))
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo', timeout=timeout, rank=RANK,
                                world_size=world_size, store=dist.PrefixStore(f'default_pg/restart_{RESTART}', store))
    if device.type == 'cuda':
        torch.backends.cuda.matmul.fp32_precision = 'tf32'  # float32 matmuls on tensor cores
    return distributed, RANK, world_size, device


def shutdown(distributed):
    """End a distributed run cleanly: without the barrier, gloo processes sometimes abort at exit."""
    if distributed:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def stop_with_error(message, distributed):
    """A failure every rank sees at the same iteration (the losses are all-reduced): one line, exit 1."""
    shutdown(distributed)
    fail(message)


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

    def largest_id(self, most=1 << 30):
        """The largest token id among the first `most` tokens (all of them, but for a huge set's first billion)."""
        tokens = self.tokens[:most]
        return max(int(tokens[i:i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24))

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
    """meta.json and the train and val datasets of cfg.data_dir, checked to agree with each other, or one clear
    error: the first iteration must not be where a bad file shows."""
    prepare = os.path.join(cfg.data_dir, 'prepare.py')
    shown = os.path.relpath(prepare) if not os.path.relpath(prepare).startswith('..') else prepare
    hint = f"run python {shown} again" if os.path.isfile(prepare) else \
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
    except (OSError, ValueError) as e:
        fail(f"'{paths['meta.json']}' is not valid JSON ({e}): {hint}")
    problem = meta_problem(meta)
    if problem:
        fail(f"'{paths['meta.json']}' {problem}: {hint}")
    datasets, itemsize = {}, np.dtype(meta['dtype']).itemsize
    for split in ('train', 'val'):
        path, size = paths[f'{split}.bin'], os.path.getsize(paths[f'{split}.bin'])
        if size % itemsize:
            fail(f"'{path}' holds {size:,} bytes, no whole number of {meta['dtype']} ids: it is cut short, or "
                 f"meta.json's dtype is not the one it was written with; {hint}")
        if size // itemsize < cfg.block_size + 1:
            fail(f"{split}.bin holds {size // itemsize} tokens, fewer than block_size + 1 = {cfg.block_size + 1}: "
                 f"lower block_size or use more data")
        datasets[split] = GPT2TrainingDataset(path, cfg.block_size, meta['dtype'])
        top = datasets[split].largest_id()
        if top >= meta['vocab_size']:
            fail(f"'{path}' holds token id {top}, but meta.json says vocab_size={meta['vocab_size']}: the two do "
                 f"not belong together; {hint}")
    return meta, datasets


def meta_problem(meta):
    """What is wrong with a dataset's meta.json, or None."""
    if not isinstance(meta, dict) or not {'vocab_size', 'dtype', 'tokenizer'} <= set(meta):
        return "needs vocab_size, dtype and tokenizer"
    if type(meta['vocab_size']) is not int or meta['vocab_size'] < 1:
        return f"has vocab_size={meta['vocab_size']!r}, not a positive integer"
    try:
        if np.dtype(meta['dtype']).kind not in 'ui':
            return f"has dtype={meta['dtype']!r}, not an integer type such as uint16"
    except TypeError:
        return f"has dtype={meta['dtype']!r}, which is no numpy dtype (uint16, say)"
    tokenizer = meta['tokenizer']
    if not isinstance(tokenizer, dict) or tokenizer.get('name') not in ('gpt2', 'char') or \
            tokenizer['name'] == 'char' and not isinstance(tokenizer.get('itos'), list):
        return f"has tokenizer={str(tokenizer)[:60]!r}, not {{'name': 'gpt2'}} or {{'name': 'char', 'itos': [...]}}"
    return None


# -----------------------------------------------------------------------------
# model

def open_hellaswag(cfg, tokenizer):
    """HellaSwag's validation examples in the model's tokens, for hellaswag=True: read (or downloaded) by every
    rank before training starts."""
    try:
        return load_hellaswag(tokenizer, cfg.block_size)
    except (HellaSwagError, OSError) as e:
        fail(f"hellaswag=True: {e}")


def init_model(cfg, meta, ckpt):
    """The model to train, on the CPU, as cfg.init_from asks: new weights, the run in out_dir/ckpt.pt, or
    OpenAI's GPT-2 (ckpt: the checkpoint read_config loaded to resume); with its tokenizer."""
    if cfg.init_from == 'scratch':
        if cfg.vocab_size is None:
            cfg.vocab_size = 50304 if meta['tokenizer'].get('name') == 'gpt2' else meta['vocab_size']
        torch.manual_seed(cfg.seed)  # every rank builds the same weights (FSDP shards them where they are)
        model, tokenizer = GPT(GPTConfig(**{k: getattr(cfg, k) for k in MODEL_KEYS})), meta['tokenizer']
    else:
        overrides = {'dropout': cfg.dropout}  # fine-tuning may change it; a resumed run's other keys are its own
        if cfg.init_from != 'resume':  # OpenAI's GPT-2, with the switches that convert (GQA by mean-pooling, SWA)
            if cfg.block_size != DEFAULTS['block_size']:
                overrides['block_size'] = cfg.block_size
            if cfg.swa:
                overrides.update(swa=True, window_size=cfg.window_size)
            if cfg.gqa:
                overrides.update(gqa=True, n_kv_head=cfg.n_kv_head)
        what = f"the checkpoint in '{cfg.out_dir}'" if cfg.init_from == 'resume' else f"init_from={cfg.init_from!r}"
        try:
            model, tokenizer, _ = load_model(cfg.init_from, cfg.out_dir, ckpt, **overrides)
        except UserError as e:
            fail(str(e) if cfg.init_from == 'resume' else f"{what}: {e}")
        adopt_model_config(cfg, asdict(model.config), what)
    if tokenizer != meta['tokenizer']:
        fail(f"the model's tokenizer ({tokenizer.get('name')}) is not the data's ({meta['tokenizer'].get('name')}, "
             f"'{cfg.data_dir}/meta.json')")
    if cfg.vocab_size < meta['vocab_size']:
        fail(f"vocab_size={cfg.vocab_size} is smaller than the data's vocabulary ({meta['vocab_size']})")
    return model, tokenizer


def adopt_model_config(cfg, loaded, what):
    """Take a loaded model's config into cfg. A model key the config sets (away from its default) to another
    value than the model's is a mistake, except dropout, which fine-tuning may change."""
    for key in MODEL_KEYS:
        asked = getattr(cfg, key)
        if key != 'dropout' and asked != DEFAULTS[key] and asked != loaded[key]:
            fail(f"{what} has {key}={loaded[key]!r} but the config asks for {key}={asked!r}")
        setattr(cfg, key, loaded[key] if key != 'dropout' else cfg.dropout)


def wrap_model(model, cfg, device, distributed):
    """The model on its device, compiled, and replicated (DDP) or sharded (FSDP2) under torchrun."""
    model.to(device)
    if cfg.compile:  # in place, so parameter names keep no _orig_mod prefix; FSDP's hooks go around Blocks
        try:
            for module in (model.transformer.h if distributed and cfg.parallel == 'fsdp' else [model]):
                module.compile(backend=cfg.compile_backend)
        except torch._dynamo.exc.InvalidBackend:
            fail(f"compile_backend={cfg.compile_backend!r} is no torch.compile backend: try 'inductor' or 'aot_eager'")
    if distributed and cfg.parallel == 'fsdp':
        bf16_cuda = device.type == 'cuda' and cfg.dtype == 'bfloat16'
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_cuda \
            else MixedPrecisionPolicy()
        for block in model.transformer.h:
            fully_shard(block, mp_policy=mp_policy)
        fully_shard(model, mp_policy=mp_policy)  # the root: wte/lm_head (tied, so in one group), wpe, ln_f
    elif distributed:
        model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
    return model


def describe_run(cfg, model, device, world_size, distributed):
    """Print how the run is set up (once, from rank 0); returns what MFU needs: the model's training FLOPs per
    token and one device's peak FLOP/s (None where unknown)."""
    n_params = sum(p.numel() for p in model.parameters()) - (0 if cfg.rope else model.transformer.wpe.weight.numel())
    flops_token = flops_per_token(model.config, n_params)
    mode = f"{cfg.parallel} under torchrun, world size {world_size}" if distributed else "one process, world size 1"
    log(f"training: {mode}, device {device}, dtype {cfg.dtype}, compile {cfg.compile}, init_from {cfg.init_from}")
    log("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in sorted(vars(cfg).items())))
    log(f"model: {n_params / 1e6:.2f}M parameters (without position embeddings), {flops_token / 1e6:.1f} MFLOPs per token")
    return flops_token, device_peak_flops(cfg, device)


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
# optimization, evaluation, checkpoints and logs

def configure_optimizer(model, cfg, device, state=None, distributed=False):
    """AdamW with weight decay on the 2-D weights (matmuls, embeddings) only, not on biases and LayerNorms; with
    a checkpoint's full optimizer state when given (sharded where the model is)."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied wte/lm_head appears once
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    fused = device.type in ('cuda', 'cpu')  # one kernel over all parameters instead of a loop, on a CPU too
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if state:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=distributed))
    return optimizer


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
def estimate_loss(model, datasets, cfg, ctx, device, rank, world_size, hellaswag_examples=None):
    """Mean loss of each split over the same eval_iters batches at every eval, dealt out to the ranks (rounded
    up to a multiple of the world size: under FSDP every rank must run the same number of forwards). None when
    a signal asks to stop: the ranks agree on it after every batch, so a long eval never delays a stop. With
    hellaswag_examples, also HellaSwag's acc_norm."""
    model.eval()
    per_rank = math.ceil(cfg.eval_iters / world_size)
    out, start, shown = {}, time.time(), time.time()
    for stream, split in ((1, 'train'), (2, 'val')):
        ds = datasets[split]
        offsets = draw_offsets(cfg.seed, stream, 0, (per_rank * world_size, cfg.batch_size), len(ds))
        losses = torch.zeros(per_rank, device=device)
        for k, batch_offsets in enumerate(offsets[rank * per_rank:(rank + 1) * per_rank]):
            x, y = ds.batch(batch_offsets, device)
            with ctx:
                _, loss = model(x, y)
            losses[k] = loss.float()
            if all_ranks_mean(stop_flag(device), world_size > 1)[0]:
                model.train()
                return None
            if time.time() - shown > 10:  # a long eval shows that it is alive, and how long it has to go
                shown, done = time.time(), k + 1 + (per_rank if split == 'val' else 0)
                log(f"  evaluating: {done}/{2 * per_rank} batches, {duration((shown - start) * (2 * per_rank / done - 1))} left")
        out[split] = all_ranks_mean(losses.mean().reshape(1), world_size > 1)[0]
    if hellaswag_examples is not None:
        out['hellaswag'] = eval_hellaswag(model, hellaswag_examples, device, ctx, rank, world_size)['acc_norm']
    model.train()
    return out


def duration(seconds):
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def evals_left(cfg, iter_num):
    """Evaluations still to come after iteration iter_num (one every eval_interval steps, and one at the end)."""
    return cfg.max_iters // cfg.eval_interval - iter_num // cfg.eval_interval + bool(cfg.max_iters % cfg.eval_interval)


def warn_if_slow(model, datasets, cfg, ctx, micro_steps, world_size, iter_num, device=torch.device('cpu')):
    """On a CPU: time one forward pass, and say at once when this configuration's evaluations or whole run will
    take long, naming the configuration sized for a CPU."""
    if device.type != 'cpu':
        return
    x, y = datasets['train'].batch(draw_offsets(cfg.seed, 0, 0, (1, cfg.batch_size), len(datasets['train']))[0],
                                   torch.device('cpu'))
    batch_loss(model, x, y, ctx)  # the first call pays one-time costs (allocations, threads)
    start = time.time()
    batch_loss(model, x, y, ctx)
    forward = time.time() - start
    eval_seconds = 2 * math.ceil(cfg.eval_iters / world_size) * forward
    step_seconds = 3 * micro_steps * forward  # the backward pass costs about two forwards
    run_seconds = step_seconds * max(cfg.max_iters - iter_num, 0) + eval_seconds * evals_left(cfg, iter_num - 1)
    if eval_seconds > 60 or run_seconds > 3600:
        log(f"note: on this CPU an evaluation will take about {duration(eval_seconds)}, a step about "
            f"{duration(step_seconds)}, the whole run about {duration(run_seconds)}; for a run sized for a CPU: "
            f"python train.py config/train_shakespeare_char_cpu.py")


def clip_gradients(model, optimizer, scaler, grad_clip):
    """Clip the gradient norm at grad_clip (0.0: no clipping) and return the norm before clipping, or None."""
    if grad_clip <= 0.0:
        return None
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if next(model.parameters()).device.type != 'cpu':  # the scale stays a tensor, so the CPU never waits for the GPU
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        return norm.full_tensor() if hasattr(norm, 'full_tensor') else norm  # FSDP: a DTensor
    # on a CPU, a multiply by a number (the same float32 scale) is cheaper than clip_grad_norm_'s by a 0-d tensor:
    # about 1% of a step on the CPU recipe, with the same gradients
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    norm = norm.full_tensor() if hasattr(norm, 'full_tensor') else norm
    scale = (grad_clip / (norm + 1e-6)).item()
    if scale < 1.0:
        for p in params:
            p.grad.mul_(scale)
    return norm


def save_run(cfg, model, optimizer, iter_num, best_val_loss, tokenizer, distributed):
    """out_dir/ckpt.pt (checkpoint.py) with the full model and optimizer state as plain CPU tensors, keyed by
    GPT's parameter names whatever the wrapping. Every rank must call this: under FSDP the full state is
    gathered from all of them. Rank 0 writes; a failed write (a full disk) stops every rank with one line."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    ckpt = {'model': get_model_state_dict(model, options=options),
            'optimizer': get_optimizer_state_dict(model, optimizer, options=options),
            'model_args': asdict(model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'config': vars(cfg), 'tokenizer': tokenizer, 'run_id': JOB_ID}
    error = ''
    if MASTER:
        try:
            save_checkpoint(os.path.join(cfg.out_dir, 'ckpt.pt'), ckpt)
        except (OSError, RuntimeError) as e:  # torch.save's zip writer reports a full disk as a RuntimeError
            free = shutil.disk_usage(cfg.out_dir).free / 1e6
            error = (f"could not write {cfg.out_dir}/ckpt.pt ({getattr(e, 'strerror', None) or 'torch.save failed'}, "
                     f"{free:,.0f} MB free there); the previous one is left as it was")
    if all_ranks_mean(torch.tensor([float(bool(error))], device=device_of(model)), distributed)[0]:
        stop_with_error(error, distributed)


def weights_problem(model, loss, distributed):
    """Why these weights must not be saved (a non-finite loss or weight, on any rank), or None."""
    local = (p.to_local() if hasattr(p, 'to_local') else p for p in model.parameters())  # FSDP: this rank's shard
    finite = math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in local)
    if all_ranks_mean(torch.tensor([float(finite)], device=device_of(model)), distributed)[0] < 1:
        return f"the weights give a loss of {loss}" if not math.isfinite(loss) else "a weight is not finite"
    return None


def compile_summary():
    """What torch.compile did in this process: a graph break, or a graph compiled anew every few steps, is where a
    compiled run loses its speed (TORCH_LOGS=graph_breaks,recompiles says why)."""
    from torch._dynamo.utils import counters
    return (f"torch.compile: {counters['stats']['unique_graphs']} graphs compiled, "
            f"{sum(counters['graph_break'].values())} graph breaks")


def device_of(model):
    return next(model.parameters()).device


@torch.no_grad()
def batch_loss(model, x, y, ctx):
    """The loss of one batch in eval mode: a check of weights no eval has seen yet."""
    model.eval()
    with ctx:
        _, loss = model(x, y)
    model.train()
    return loss.item()


def save_unevaluated(cfg, model, raw_model, optimizer, datasets, ctx, iter_num, best_val_loss, tokenizer,
                     distributed):
    """Save weights no eval has seen (on a signal, at save_interval) if they are sound: the loss of one batch of
    step iter_num's data and every weight must be finite. Returns why they are not (nothing saved), or None."""
    x, y = datasets['train'].batch(draw_offsets(cfg.seed, 0, iter_num, (1, cfg.batch_size),
                                                len(datasets['train']))[0], device_of(raw_model))
    problem = weights_problem(raw_model, batch_loss(model, x, y, ctx), distributed)
    if problem:
        return problem
    save_run(cfg, raw_model, optimizer, iter_num, best_val_loss, tokenizer, distributed)
    return None


def open_log(cfg, iter_num):
    """out_dir/log.jsonl opened for appending (rank 0; None elsewhere), with a line that marks this run's start;
    and the Weights & Biases run when wandb_log."""
    if not MASTER:
        return None
    log_file = os.open(os.path.join(cfg.out_dir, 'log.jsonl'), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    record(log_file, {'iter': iter_num, 'event': 'start', 'init_from': cfg.init_from, 'restart': RESTART,
                      'time': time.time()}, cfg)
    if cfg.wandb_log:
        import wandb
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))
    return log_file


def record(log_file, entry, cfg):
    """One line of out_dir/log.jsonl (rank 0), and the same to Weights & Biases when wandb_log. The file is
    only appended to, a whole line at a time: a full disk leaves no torn line behind."""
    if MASTER:
        line, size = (json.dumps(entry) + '\n').encode(), os.fstat(log_file).st_size
        try:
            if os.write(log_file, line) != len(line):
                raise OSError(28, 'No space left on device')
        except OSError as e:
            os.ftruncate(log_file, size)
            fail(f"could not write {cfg.out_dir}/log.jsonl ({e.strerror or e})")
        if cfg.wandb_log and 'event' not in entry:
            import wandb
            wandb.log(entry, step=entry['iter'])


STOP_SIGNALS = []  # SIGINT or SIGTERM: save and stop after the current step (or eval batch)


def stop_flag(device):
    """(1,): 1.0 when this process was asked to stop, for the ranks to agree on. Filled on the device: a copy from
    the host (torch.tensor) would make the CPU wait there for the GPU's queued work."""
    return torch.full((1,), float(bool(STOP_SIGNALS)), device=device)


def request_stop(signum, frame):
    """A job cancel signals every process and torchrun forwards one more to each worker, so two requests can be four
    signals. A fifth before the run could act on them (a step that never ends) stops it at once."""
    STOP_SIGNALS.append(signum)
    if len(STOP_SIGNALS) >= 5:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


# -----------------------------------------------------------------------------

def main(argv=None):
    cfg, ckpt = read_config(argv)
    distributed, rank, world_size, device = setup_distributed(cfg)
    micro_steps = cfg.gradient_accumulation_steps // world_size  # this rank's share of each step

    # data and model
    meta, datasets = open_data(cfg)
    raw_model, tokenizer = init_model(cfg, meta, ckpt)  # raw_model: GPT's own names, for checkpoints and AdamW
    iter_num = ckpt.get('iter_num', 0) if ckpt else 0
    best_val_loss = ckpt.get('best_val_loss', float('inf')) if ckpt else float('inf')
    hellaswag_examples = open_hellaswag(cfg, tokenizer) if cfg.hellaswag else None
    flops_token, peak = describe_run(cfg, raw_model, device, world_size, distributed)
    model = wrap_model(raw_model, cfg, device, distributed)

    # optimizer, built after sharding so that it holds the sharded parameters
    # (a checkpoint of load_gpt2.py --out has optimizer None: a fresh one)
    optimizer = configure_optimizer(raw_model, cfg, device, ckpt and ckpt.get('optimizer'), distributed)
    ckpt = None  # free the memory
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == 'float16')
    ctx = nullcontext() if cfg.dtype == 'float32' else torch.autocast(device.type, dtype=getattr(torch, cfg.dtype))

    # logging, and SIGINT/SIGTERM (Ctrl-C, a preemption notice): finish the step, save, exit 0
    log_file = open_log(cfg, iter_num)
    STOP_SIGNALS.clear()
    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    warn_if_slow(model, datasets, cfg, ctx, micro_steps, world_size, iter_num, device)
    step_seconds, eval_seconds, save_cost_shown = [], 0.0, False  # for the time left, and a save's cost
    saved_iter = iter_num  # the iteration of the weights in ckpt.pt, or of those we started from
    kept = f"ckpt.pt is left as it was (saved at iteration {iter_num})" if cfg.init_from == 'resume' else \
        "no checkpoint was written"
    stop = False
    try:
        while True:
            # evaluate, and save a checkpoint
            if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
                t0 = time.time()
                losses = estimate_loss(model, datasets, cfg, ctx, device, rank, world_size, hellaswag_examples)
                if losses is None:  # a signal: save below
                    stop = True
                    break
                eval_seconds = time.time() - t0
                log(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                    + (f", hellaswag {losses['hellaswag']:.4f}" if 'hellaswag' in losses else ""))
                record(log_file, {'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                                  **{k: v for k, v in losses.items() if k == 'hellaswag'}}, cfg)
                if not math.isfinite(losses['val']):
                    stop_with_error(f"val loss is {losses['val']} at iteration {iter_num}; {kept}", distributed)
                improved = losses['val'] < best_val_loss
                best_val_loss = min(best_val_loss, losses['val'])
                if (improved or cfg.always_save_checkpoint) and iter_num > saved_iter and not cfg.eval_only:
                    problem = weights_problem(raw_model, losses['val'], distributed)
                    if problem:
                        stop_with_error(f"{problem} at iteration {iter_num}; {kept}", distributed)
                    save_run(cfg, raw_model, optimizer, iter_num, best_val_loss, tokenizer, distributed)
                    saved_iter = iter_num
                    kept = f"ckpt.pt is left as it was (saved at iteration {iter_num})"
                    log(f"saved {cfg.out_dir}/ckpt.pt at iteration {iter_num}")
            if iter_num >= cfg.max_iters or cfg.eval_only:
                break

            # a checkpoint between evals
            if cfg.save_interval and iter_num % cfg.save_interval == 0 and iter_num > saved_iter:
                t0 = time.time()
                problem = save_unevaluated(cfg, model, raw_model, optimizer, datasets, ctx, iter_num, best_val_loss,
                                           tokenizer, distributed)
                if problem:
                    stop_with_error(f"{problem} at iteration {iter_num}; {kept}", distributed)
                took, steps_took = time.time() - t0, float(np.median(step_seconds)) * cfg.save_interval
                log(f"saved {cfg.out_dir}/ckpt.pt at iteration {iter_num}" + ("" if save_cost_shown else  # once
                    f" in {took:.2f} s, {took / steps_took:.1%} of the time of save_interval={cfg.save_interval} steps"))
                saved_iter, kept = iter_num, f"ckpt.pt is left as it was (saved at iteration {iter_num})"
                save_cost_shown = True

            # one optimizer step: this rank's share of the step's micro-batches
            t0 = time.time()
            lr = get_lr(iter_num, cfg)
            for group in optimizer.param_groups:
                group['lr'] = lr
            offsets = draw_offsets(cfg.seed, 0, iter_num, (cfg.gradient_accumulation_steps, cfg.batch_size),
                                   len(datasets['train']))
            loss_sum = torch.zeros((), device=device)
            for micro_step, batch_offsets in enumerate(offsets[rank * micro_steps:(rank + 1) * micro_steps]):
                if cfg.dropout > 0:  # masks from (seed, step, micro-batch) alone: any world size, the same losses
                    torch.manual_seed(hash((cfg.seed, iter_num, rank * micro_steps + micro_step)) % 2**63)
                x, y = datasets['train'].batch(batch_offsets, device)
                with grad_sync(model, micro_step == micro_steps - 1):
                    with ctx:
                        _, loss = model(x, y)
                    scaler.scale(loss / micro_steps).backward()
                loss_sum += loss.detach().float()
            grad_norm = clip_gradients(raw_model, optimizer, scaler, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # one all-reduce per step: the loss over all ranks, and whether any rank was asked to stop
            stats = torch.cat([(loss_sum / micro_steps).reshape(1), stop_flag(device)])
            loss_value, stop = all_ranks_mean(stats, distributed)
            if not math.isfinite(loss_value):
                stop_with_error(f"loss is {loss_value} at iteration {iter_num}; {kept}", distributed)

            # the log line
            dt = time.time() - t0
            step_seconds.append(dt)
            if iter_num % cfg.log_interval == 0:
                tokens_per_sec = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps / dt
                mfu = flops_token * tokens_per_sec / (peak * world_size) if peak else None
                typical = float(np.median(step_seconds[-50:]))  # the first steps (compile) are no guide
                left = typical * (cfg.max_iters - iter_num - 1) + eval_seconds * evals_left(cfg, iter_num)
                log(f"iter {iter_num}/{cfg.max_iters}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                    f"{tokens_per_sec:,.0f} tokens/s" + (f", MFU {mfu * 100:.1f}%" if mfu is not None else "")
                    + f", {duration(left)} left")
                record(log_file, {'iter': iter_num, 'loss': loss_value, 'lr': lr, 'ms': dt * 1000,
                                  'tokens_per_sec': tokens_per_sec, 'mfu': mfu,
                                  'grad_norm': None if grad_norm is None else grad_norm.item()}, cfg)
            iter_num += 1
            if stop:
                break

        if stop:  # by a signal: save the step reached, if its weights are sound
            for s in previous_handlers:  # more signals would only cut the save short
                signal.signal(s, signal.SIG_IGN)
            if iter_num == saved_iter:
                log(f"stopped by a signal at iteration {iter_num}: {kept}")
            else:
                problem = save_unevaluated(cfg, model, raw_model, optimizer, datasets, ctx, iter_num, best_val_loss,
                                           tokenizer, distributed)
                if problem:
                    stop_with_error(f"stopped by a signal, but {problem} at iteration {iter_num}; {kept}", distributed)
                log(f"stopped by a signal: saved {cfg.out_dir}/ckpt.pt at iteration {iter_num}")
    finally:
        for s, handler in previous_handlers.items():
            if not stop:  # a stopping run ignores signals until it has exited
                signal.signal(s, handler)
        if MASTER:
            os.close(log_file)
    if cfg.compile:
        log(compile_summary())
    shutdown(distributed)


def peer_lost(error):
    """Whether error is a collective failing because another rank died or stopped answering: gloo's transport
    (a closed connection, a timeout) or any of torch.distributed's own errors (NCCL's, the store's)."""
    return isinstance(error, dist.DistError) or isinstance(error, RuntimeError) and 'gloo/transport' in str(error)


if __name__ == '__main__':
    try:
        main()
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        reason = str(e).splitlines()[0].split('] ', 1)[-1].split('. ')[0][:200]  # gloo: "[pair.cc:537] Read error ..."
        print(f"error: rank {RANK}: a process of this job died or stopped answering ({reason}); torchrun restarts "
              f"the job if it has restarts left (--max-restarts), else stops it", file=sys.stderr, flush=True)
        os._exit(1)  # at once: the process group's clean-up could wait for the dead peer
