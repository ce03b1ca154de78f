"""train.py end to end on a tiny synthetic corpus: one process in this process, DDP and FSDP under torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

import train
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
ITOS = list("\nabcdefgh ")
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--device=cpu',
        '--compile=False', '--dtype=float32', '--learning_rate=3e-3', '--warmup_iters=2', '--min_lr=3e-4',
        '--eval_iters=2', '--log_interval=1', '--gradient_accumulation_steps=1']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """A character corpus with structure to learn: words of a small alphabet with repeating spellings."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(ITOS[1:-1], size=rng.integers(2, 6))) for _ in range(12)]
    text = " ".join(rng.choice(words, size=6000)) + "\n"
    ids = np.array([ITOS.index(c) for c in text], dtype=np.uint16)
    d = tmp_path_factory.mktemp('data')
    n = int(0.9 * len(ids))
    ids[:n].tofile(d / 'train.bin')
    ids[n:].tofile(d / 'val.bin')
    (d / 'meta.json').write_text(json.dumps({'vocab_size': len(ITOS), 'dtype': 'uint16',
                                             'tokenizer': {'name': 'char', 'itos': ITOS}}))
    return str(d)


def run_train(data_dir, out_dir, *args):
    """train.main in this process (one process, CPU)."""
    train.main([f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY, *args])


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def train_losses(out_dir):
    """{iter: loss} of the training steps in log.jsonl (a resumed run appends)."""
    return {e['iter']: e['loss'] for e in read_log(out_dir) if 'loss' in e}


def grad_norms(out_dir):
    return {e['iter']: e['grad_norm'] for e in read_log(out_dir) if 'loss' in e}


def val_losses(out_dir):
    return {e['iter']: e['val_loss'] for e in read_log(out_dir) if 'val_loss' in e}


def close(a, b, tol=1e-3):
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol * max(1.0, abs(b[k])) for k in a)


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=HERE, **extra)


def torchrun(data_dir, out_dir, *args):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY, *args]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def sample_from(out_dir):
    result = subprocess.run([sys.executable, os.path.join(HERE, 'sample.py'), '--init_from=resume',
                             f'--out_dir={out_dir}', '--start=ab', '--max_new_tokens=20', '--temperature=0'],
                            env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('ab') and len(result.stdout) > 10
    return result.stdout


def one_line_error(capsys, argv, code=1):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: '), err
    return err


# ----------------------------------------------------------------------------------------------------
# one process

def test_loss_falls_and_log_jsonl_has_the_figures(data_dir, tmp_path):
    run_train(data_dir, tmp_path, '--max_iters=60', '--eval_interval=30', '--gradient_accumulation_steps=2',
              '--peak_flops=1e12')
    log = read_log(tmp_path)
    steps = [e for e in log if 'loss' in e]
    evals = [e for e in log if 'val_loss' in e]
    assert [e['iter'] for e in steps] == list(range(60))
    assert [e['iter'] for e in evals] == [0, 30, 60]
    assert set(steps[0]) >= {'iter', 'loss', 'lr', 'ms', 'tokens_per_sec', 'mfu'}
    assert steps[0]['tokens_per_sec'] > 0 and 0 < steps[0]['mfu'] < 1
    assert np.mean([e['loss'] for e in steps[-5:]]) < 0.7 * np.mean([e['loss'] for e in steps[:5]])
    assert evals[-1]['val_loss'] < 0.7 * evals[0]['val_loss']


def test_resume_is_exact_and_checkpoint_loads_with_weights_only(data_dir, tmp_path):
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    run_train(data_dir, straight, '--max_iters=8', '--eval_interval=4', '--dropout=0.1')
    run_train(data_dir, split, '--max_iters=4', '--eval_interval=4', '--dropout=0.1')
    run_train(data_dir, split, '--max_iters=8', '--eval_interval=4', '--dropout=0.1', '--init_from=resume')
    assert train_losses(split) == train_losses(straight)  # identical, not merely close
    assert sorted(train_losses(split)) == list(range(8))
    ckpt = torch.load(split / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert set(ckpt) >= {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'tokenizer'}
    assert ckpt['iter_num'] == 8 and ckpt['tokenizer'] == {'name': 'char', 'itos': ITOS}
    assert ckpt['config']['max_iters'] == 8 and ckpt['model_args']['n_layer'] == 2
    assert not any(k.startswith(('_orig_mod.', 'module.')) for k in ckpt['model'])
    straight_ckpt = torch.load(straight / 'ckpt.pt', map_location='cpu', weights_only=True)
    for k, v in ckpt['model'].items():
        assert torch.equal(v, straight_ckpt['model'][k]), k
    sample_from(split)


def test_eval_only_writes_no_checkpoint(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    before = (tmp_path / 'ckpt.pt').read_bytes()
    run_train(data_dir, tmp_path, '--init_from=resume', '--eval_only=True')
    assert 'val loss' in capsys.readouterr().out
    assert (tmp_path / 'ckpt.pt').read_bytes() == before
    assert 'val_loss' in read_log(tmp_path)[-1]


def test_fine_tune_from_a_gpt2_directory_with_gqa(tmp_path):
    """init_from a Hugging Face-format GPT-2, converted to GQA by load_gpt2, then uptrained."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf_dir = tmp_path / 'hf'
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(hf_dir)
    data = tmp_path / 'data'
    data.mkdir()
    ids = np.random.default_rng(0).integers(0, 50257, size=4000).astype(np.uint16)
    ids[:3600].tofile(data / 'train.bin')
    ids[3600:].tofile(data / 'val.bin')
    (data / 'meta.json').write_text(json.dumps({'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': {'name': 'gpt2'}}))
    out = tmp_path / 'out'
    train.main([f'--data_dir={data}', f'--out_dir={out}', f'--init_from={hf_dir}', '--gqa=True', '--n_kv_head=2',
                '--block_size=32', '--batch_size=2', '--max_iters=3', '--eval_interval=3', '--eval_iters=1',
                '--device=cpu', '--compile=False'])
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['model_args']['gqa'] and ckpt['model_args']['n_kv_head'] == 2
    assert ckpt['model_args']['n_layer'] == 2 and ckpt['model_args']['block_size'] == 32
    assert ckpt['model']['transformer.h.0.attn.c_attn.weight'].shape == ((4 + 2 * 2) * 8, 32)
    assert ckpt['tokenizer'] == {'name': 'gpt2'}
    assert all(np.isfinite(e['loss']) for e in read_log(out) if 'loss' in e)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_exits_zero(data_dir, tmp_path, signum):
    cmd = [sys.executable, os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={tmp_path}',
           *TINY, '--max_iters=100000', '--eval_interval=100000']
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training runs
        if line.startswith('iter 3/'):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert 'stopped by a signal' in out
    ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] >= 4
    assert sorted(train_losses(tmp_path)) == list(range(ckpt['iter_num']))  # every finished step was logged


def test_nan_loss_stops_with_the_iteration_and_keeps_the_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    before = (tmp_path / 'ckpt.pt').read_bytes()
    real_forward = train.GPT.forward
    calls = []

    def forward_going_nan(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) >= 5:  # iterations 2, 3, 4 and 5 are fine
                loss = loss * float('nan')
        return logits, loss

    monkeypatch.setattr(train.GPT, 'forward', forward_going_nan)
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--init_from=resume',
                                  '--max_iters=20', '--eval_interval=100'])
    assert 'nan' in err and 'iteration 6' in err
    assert (tmp_path / 'ckpt.pt').read_bytes() == before


# ----------------------------------------------------------------------------------------------------
# torchrun: DDP and FSDP on 2 CPU processes with gloo

def test_ddp_and_fsdp_match_one_process_and_resume(data_dir, tmp_path):
    common = ['--gradient_accumulation_steps=2', '--eval_interval=3', '--dropout=0.1']  # masks per micro-batch
    run_train(data_dir, tmp_path / 'one', *common, '--max_iters=6')
    one = train_losses(tmp_path / 'one')
    one_norms, one_evals = grad_norms(tmp_path / 'one'), val_losses(tmp_path / 'one')
    assert max(one_norms.values()) > 1.0  # grad_clip=1.0 acts: clipping is part of what is compared

    out = torchrun(data_dir, tmp_path / 'ddp', *common, '--max_iters=6')
    assert out.splitlines()[0].startswith('training: ddp under torchrun, world size 2')  # the first line
    assert out.count('config:') == 1  # printed once, by rank 0
    ddp = train_losses(tmp_path / 'ddp')
    assert sorted(ddp) == list(range(6))
    assert all(abs(ddp[i] - one[i]) < 1e-3 for i in range(6)), (ddp, one)
    assert close(grad_norms(tmp_path / 'ddp'), one_norms) and close(val_losses(tmp_path / 'ddp'), one_evals)

    out = torchrun(data_dir, tmp_path / 'fsdp', *common, '--max_iters=3', '--parallel=fsdp')
    assert out.splitlines()[0].startswith('training: fsdp under torchrun, world size 2')
    out = torchrun(data_dir, tmp_path / 'fsdp', *common, '--max_iters=6', '--parallel=fsdp', '--init_from=resume')
    fsdp = train_losses(tmp_path / 'fsdp')
    assert sorted(fsdp) == list(range(6))  # 0-2, then 3-5 after the resume
    assert all(abs(fsdp[i] - one[i]) < 1e-3 for i in range(6)), (fsdp, one)
    # the norm clip_grad_norm_ computes over the shards is the whole model's, as in one process
    assert close(grad_norms(tmp_path / 'fsdp'), one_norms) and close(val_losses(tmp_path / 'fsdp'), one_evals)

    # the checkpoints are full (unsharded) states: they resume in one process and load in sample.py
    for name in ('ddp', 'fsdp'):
        ckpt = torch.load(tmp_path / name / 'ckpt.pt', map_location='cpu', weights_only=True)
        assert ckpt['iter_num'] == 6
        assert ckpt['model']['transformer.wte.weight'].shape == (len(ITOS), 32)
        assert torch.equal(ckpt['model']['transformer.wte.weight'], ckpt['model']['lm_head.weight'])  # still tied
    run_train(data_dir, tmp_path / 'ddp', *common, '--max_iters=7', '--init_from=resume')
    assert sorted(train_losses(tmp_path / 'ddp')) == list(range(7))
    assert sample_from(tmp_path / 'ddp') and sample_from(tmp_path / 'fsdp')


# ----------------------------------------------------------------------------------------------------
# bad input: one line, exit 1, nothing overwritten

def test_bad_input_is_one_clear_line(data_dir, tmp_path, capsys, monkeypatch):
    base = [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=2']
    assert "did you mean 'batch_size'" in one_line_error(capsys, base + ['--batch_sise=3'])
    assert "'n_layer' must be int, got 'two'" in one_line_error(capsys, base + ['--n_layer=two'])
    assert 'data/nowhere' in one_line_error(capsys, [*base, '--data_dir=data/nowhere'])
    err = one_line_error(capsys, [*base, f'--data_dir={os.path.join(HERE, "data", "shakespeare_char")}-missing'])
    assert 'not found' in err
    err = one_line_error(capsys, [*base, '--block_size=5000'])  # val.bin holds ~2,700 tokens
    assert 'val.bin' in err and 'block_size' in err
    err = one_line_error(capsys, [*base, '--init_from=resume'])
    assert 'no checkpoint' in err
    assert 'float16' in one_line_error(capsys, [*base, '--dtype=float16'])
    assert "'compile' must be True, False or None" in one_line_error(capsys, [*base, '--compile=1'])
    assert "'parallel' must be 'ddp' or 'fsdp'" in one_line_error(capsys, [*base, '--parallel=zero'])
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    assert 'cannot be written' in one_line_error(capsys, [*base, f'--out_dir={blocker}/out'])
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    err = one_line_error(capsys, [*base, '--gradient_accumulation_steps=3'])
    assert 'gradient_accumulation_steps=3' in err and 'world size (2)' in err


def test_missing_bin_names_the_prepare_script(tmp_path, capsys):
    data = tmp_path / 'shakespeare_char'
    data.mkdir()
    (data / 'prepare.py').write_text('')
    err = one_line_error(capsys, [f'--data_dir={data}', f'--out_dir={tmp_path}/out', *TINY])
    assert 'prepare.py' in err and 'meta.json' in err


def test_wrong_or_corrupt_checkpoint_is_refused_and_left_alone(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    path = tmp_path / 'ckpt.pt'
    good, log = path.read_bytes(), (tmp_path / 'log.jsonl').read_bytes()
    base = [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--init_from=resume', '--max_iters=4']
    err = one_line_error(capsys, [a for a in base if not a.startswith('--n_layer')] + ['--n_layer=3'])
    assert 'n_layer=2' in err and 'n_layer=3' in err
    assert path.read_bytes() == good and (tmp_path / 'log.jsonl').read_bytes() == log
    path.write_bytes(good[:len(good) // 2])
    assert 'cannot be read as a checkpoint' in one_line_error(capsys, base)  # checkpoint.py's one reader
    assert path.read_bytes() == good[:len(good) // 2] and (tmp_path / 'log.jsonl').read_bytes() == log


def test_distributed_errors_come_from_rank_zero_only(data_dir, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY,
           '--gradient_accumulation_steps=3']
    start = time.time()
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count('error: gradient_accumulation_steps=3') == 1, result.stderr
    assert time.time() - start < 60


# ----------------------------------------------------------------------------------------------------
# the pieces

def test_dataset_windows_and_uint32_ids(tmp_path):
    ids = np.arange(70_000, 70_050, dtype=np.uint32)  # ids past 65,535 need uint32
    ids.tofile(tmp_path / 'train.bin')
    ds = train.GPT2TrainingDataset(str(tmp_path / 'train.bin'), block_size=8, dtype='uint32')
    assert len(ds) == 42  # windows of 9 tokens start at 0 .. 41
    x, y = ds[5]
    assert x.tolist() == list(range(70_005, 70_013)) and y.tolist() == list(range(70_006, 70_014))
    xb, yb = ds.batch([0, 41], torch.device('cpu'))
    assert xb.shape == yb.shape == (2, 8) and xb.dtype == torch.int64 and yb[1, -1] == 70_049


def test_micro_batches_depend_on_seed_and_step_only():
    a = train.draw_offsets(1337, 0, 5, (4, 3), 1000)
    assert np.array_equal(a, train.draw_offsets(1337, 0, 5, (4, 3), 1000))
    assert not np.array_equal(a, train.draw_offsets(1337, 0, 6, (4, 3), 1000))
    assert not np.array_equal(a, train.draw_offsets(1, 0, 5, (4, 3), 1000))
    assert not np.array_equal(a, train.draw_offsets(1337, 1, 5, (4, 3), 1000))  # eval batches are others
    assert a.min() >= 0 and a.max() < 1000


@pytest.mark.parametrize('grad_clip', [1e-3, 1.0, 1e3])  # clipped hard, a little or not at all
def test_clipping_on_a_cpu_equals_clip_grad_norm(grad_clip):
    torch.manual_seed(0)
    models = [GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=16)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randint(16, (3, 8))
    for m in models:
        (m(x, x)[1] * 30).backward()
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    norm = train.clip_gradients(models[0], torch.optim.SGD(models[0].parameters()), scaler, grad_clip)
    expected = torch.nn.utils.clip_grad_norm_(models[1].parameters(), grad_clip)
    assert norm.item() == expected.item() and (grad_clip < 1e3) == (norm.item() > grad_clip)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a.grad, b.grad)


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110, decay_lr=True)
    lrs = [train.get_lr(it, cfg) for it in range(130)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5.5e-4)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[110] == lrs[129] == pytest.approx(1e-4)
    assert train.get_lr(50, SimpleNamespace(**{**vars(cfg), 'decay_lr': False})) == 1e-3


def test_weight_decay_on_2d_weights_only_and_the_tied_matrix_once():
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=16))
    cfg = SimpleNamespace(weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.95)
    decay, no_decay = train.configure_optimizer(model, cfg, torch.device('cpu')).param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0 and decay['betas'] == (0.9, 0.95)
    assert all(p.dim() == 2 for p in decay['params']) and all(p.dim() == 1 for p in no_decay['params'])
    assert sum(p is model.lm_head.weight for p in decay['params']) == 1
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))


def test_flops_per_token_counts_attention_and_the_window():
    gpt2 = GPTConfig(vocab_size=50257)
    n = 124_439_808 - 1024 * 768  # GPT-2 124M without wpe
    attention = 12 * 12 * 12 * 64 * 1024
    assert train.flops_per_token(gpt2, n) == 6 * n + attention
    swa = GPTConfig(vocab_size=50257, swa=True, window_size=256)
    assert train.flops_per_token(swa, n) == 6 * n + attention // 4


def test_grad_sync_reduces_on_the_last_micro_step_only(tmp_path):
    """DDP's comm hook runs, and FSDP2 hands out reduced (sharded) gradients, only when sync is True."""
    dist.init_process_group('gloo', init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        config = GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=16)
        x = torch.randint(0, 16, (2, 8))
        ddp, reductions = DDP(GPT(config)), []

        def counting_hook(state, bucket):
            reductions.append(bucket.index())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        ddp.register_comm_hook(None, counting_hook)
        fsdp = GPT(config)
        for block in fsdp.transformer.h:
            fully_shard(block)
        fully_shard(fsdp)
        for micro_step in range(3):
            last = micro_step == 2
            for model in (ddp, fsdp):
                with train.grad_sync(model, last):
                    model(x, x)[1].backward()
            assert bool(reductions) == last
            assert (fsdp.lm_head.weight.grad is not None) == last
    finally:
        dist.destroy_process_group()


def test_a_full_disk_is_one_line_and_leaves_checkpoint_log_and_resume_whole(data_dir, tmp_path, monkeypatch, capsys):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    good = (tmp_path / 'ckpt.pt').read_bytes()

    def save_half_then_fail(obj, f):
        f.write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')

    with monkeypatch.context() as m:
        m.setattr(train.torch, 'save', save_half_then_fail)
        err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=4',
                                      '--eval_interval=2', '--init_from=resume'])
    assert 'No space left on device' in err and 'the previous one is left as it was' in err
    assert (tmp_path / 'ckpt.pt').read_bytes() == good and not (tmp_path / 'ckpt.pt.tmp').exists()

    def save_half_then_fail_as_torch_does(obj, f):  # a real full disk: torch's zip writer raises RuntimeError
        f.write(b'half a checkpoint')
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 5923520 vs 5923412')

    with monkeypatch.context() as m:
        m.setattr(train.torch, 'save', save_half_then_fail_as_torch_does)
        err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=4',
                                      '--eval_interval=2', '--init_from=resume'])
    assert 'torch.save failed' in err and 'MB free there' in err and (tmp_path / 'ckpt.pt').read_bytes() == good

    real_write = os.write
    with monkeypatch.context() as m:  # the disk fills up in the middle of a log line
        m.setattr(train.os, 'write', lambda fd, data: real_write(fd, data[:len(data) // 2]))
        assert 'log.jsonl' in one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY,
                                                      '--max_iters=4', '--init_from=resume'])
    read_log(tmp_path)  # every line whole: each parses
    run_train(data_dir, tmp_path, '--max_iters=4', '--eval_interval=2', '--init_from=resume')
    assert sorted(train_losses(tmp_path)) == list(range(4))


# ----------------------------------------------------------------------------------------------------
# a run never loses its progress

def worker_pids(parent):
    """The pids whose parent is `parent` (torchrun's workers)."""
    pids = []
    for d in filter(str.isdigit, os.listdir('/proc')):
        try:
            if open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1] == str(parent):
                pids.append(int(d))
        except OSError:
            pass
    return pids


def signal_all(pids, signum, rounds):
    for _ in range(rounds):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        time.sleep(1.5)  # a second request, as a person or a scheduler sends it


def wait_for(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting with {prefix!r}: {proc.stderr.read()[-2000:]}")


def test_a_signal_to_every_process_of_a_torchrun_job_saves(data_dir, tmp_path):
    """A job cancel signals torchrun and each worker, and torchrun forwards one more to each."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY,
           '--gradient_accumulation_steps=2', '--max_iters=100000', '--eval_interval=100000', '--parallel=fsdp']
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(proc, 'iter 3/')
    signal_all([proc.pid] + worker_pids(proc.pid), signal.SIGTERM, rounds=1)
    out, err = proc.communicate(timeout=120)
    assert 'stopped by a signal: saved' in out, err[-3000:]
    ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] >= 4 and sorted(train_losses(tmp_path)) == list(range(ckpt['iter_num']))


def test_twice_to_each_worker_still_saves_and_exits_zero(data_dir, tmp_path):
    """The workers as torchrun starts them (RANK, WORLD_SIZE, ...), each sent SIGINT and a forwarded copy, twice."""
    port = 29500 + os.getpid() % 1000
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}',
                               f'--out_dir={tmp_path}', *TINY, '--gradient_accumulation_steps=2',
                               '--max_iters=100000', '--eval_interval=100000'],
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                                      MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for r in range(2)]
    wait_for(procs[0], 'iter 3/')
    for _ in range(2):
        signal_all([p.pid for p in procs] * 2, signal.SIGINT, rounds=1)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[0][-1500:] + o[1][-1500:] for o in outs]
    assert 'stopped by a signal: saved' in outs[0][0]
    assert torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] >= 4


def test_a_signal_during_a_long_evaluation_acts_within_a_batch(data_dir, tmp_path):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    cmd = [sys.executable, os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY,
           '--init_from=resume', '--max_iters=4', '--eval_interval=4', '--eval_iters=1000000']  # hours of eval
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, 'iter 3/')
    time.sleep(1.0)  # inside the eval at iteration 4
    start = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and time.time() - start < 15, err
    assert 'stopped by a signal: saved' in out and 'eval 4' not in out
    assert torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] == 4


def test_unsound_weights_never_replace_a_good_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    """A step that leaves a NaN weight, then a signal at once: the step's own loss was finite."""
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    good = (tmp_path / 'ckpt.pt').read_bytes()
    real = train.configure_optimizer

    def poisoned(*args):
        optimizer = real(*args)
        step = optimizer.step

        def step_then_poison(*a, **k):  # installed after the checkpoint's state is loaded: training steps only
            step(*a, **k)
            with torch.no_grad():
                optimizer.param_groups[0]['params'][0].view(-1)[0] = float('nan')
            train.STOP_SIGNALS.append(signal.SIGTERM)  # as if it came now
        optimizer.step = step_then_poison
        return optimizer

    monkeypatch.setattr(train, 'configure_optimizer', poisoned)
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--init_from=resume',
                                  '--max_iters=10'])
    assert 'stopped by a signal, but' in err and 'iteration 3' in err and 'left as it was (saved at iteration 2)' in err
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


def test_a_new_run_never_replaces_an_earlier_one_silently(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    good, log = (tmp_path / 'ckpt.pt').read_bytes(), (tmp_path / 'log.jsonl').read_bytes()
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=2'])
    assert '--init_from=resume' in err and '--out_dir' in err and '--overwrite=True' in err
    assert (tmp_path / 'ckpt.pt').read_bytes() == good and (tmp_path / 'log.jsonl').read_bytes() == log
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2', '--overwrite=True', '--seed=7')
    assert (tmp_path / 'log.jsonl').read_bytes().startswith(log)  # only ever appended to
    starts = [e for e in read_log(tmp_path) if e.get('event') == 'start']
    assert len(starts) == 2 and all(e['init_from'] == 'scratch' for e in starts)


def test_resume_takes_the_saved_configuration(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path, '--max_iters=3', '--eval_interval=3', '--learning_rate=1e-3', '--decay_lr=False')
    capsys.readouterr()
    train.main(['--init_from=resume', f'--out_dir={tmp_path}', '--max_iters=5', '--device=cpu'])  # nothing else
    out = capsys.readouterr().out
    assert 'changed: max_iters=5 (was 3)' in out and 'learning_rate' not in out.split('config:')[0]
    assert [e['lr'] for e in read_log(tmp_path) if 'lr' in e] == [1e-3] * 5  # not the default's 6e-4
    ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['iter_num'] == 5 and ckpt['config']['batch_size'] == 4 and ckpt['config']['data_dir'] == data_dir


# ----------------------------------------------------------------------------------------------------
# a new user's first hour: one line for each mistake, progress that shows

def edit_meta(d, **changes):
    meta = json.loads((d / 'meta.json').read_text())
    (d / 'meta.json').write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize('damage, words', [
    (lambda d: os.truncate(d / 'train.bin', os.path.getsize(d / 'train.bin') - 1), ['no whole number of uint16 ids']),
    (lambda d: edit_meta(d, vocab_size=5), ['holds token id', 'vocab_size=5']),
    (lambda d: edit_meta(d, vocab_size='10'), ["vocab_size='10', not a positive integer"]),
    (lambda d: edit_meta(d, dtype='uint32'), ['train.bin', "meta.json"]),
    (lambda d: edit_meta(d, dtype='float16'), ["dtype='float16', not an integer type"]),
    (lambda d: edit_meta(d, dtype='bogus'), ["dtype='bogus', which is no numpy dtype"]),
    (lambda d: edit_meta(d, tokenizer='char'), ["tokenizer='char', not"]),
], ids=['short-bin', 'ids-past-vocab', 'vocab-a-string', 'dtype-not-the-files', 'float-dtype', 'unknown-dtype',
        'tokenizer-a-string'])
def test_data_files_that_disagree_are_one_line_before_training(data_dir, tmp_path, capsys, damage, words):
    d = tmp_path / 'data'
    shutil.copytree(data_dir, d)
    damage(d)
    err = one_line_error(capsys, [f'--data_dir={d}', f'--out_dir={tmp_path / "out"}', *TINY, '--max_iters=1'])
    assert all(w in err for w in words), err
    assert not (tmp_path / 'out' / 'log.jsonl').exists()  # refused before anything ran


def test_the_whole_configuration_is_checked_before_data_and_device(tmp_path, capsys):
    err = one_line_error(capsys, ['--n_embd=100', '--n_head=3', f'--data_dir={tmp_path / "nowhere"}'])
    assert 'n_embd=100 must be divisible by n_head=3' in err
    if not torch.cuda.is_available():
        err = one_line_error(capsys, ['--device=cuda', f'--data_dir={tmp_path}', f'--out_dir={tmp_path / "o"}'])
        assert 'device=cuda is not available on this machine' in err


def test_log_lines_show_progress_and_time_left(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path, '--max_iters=3', '--eval_interval=3')
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('iter ')]
    assert [l.split(':')[0] for l in lines] == ['iter 0/3', 'iter 1/3', 'iter 2/3'] and all(l.endswith(' left') for l in lines)


def test_a_cpu_run_that_will_take_long_says_so_and_names_the_cpu_config(data_dir, tmp_path, capsys):
    cfg, _ = train.read_config([f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--eval_iters=10000000'])
    _, datasets = train.open_data(cfg)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=2, n_head=2, n_embd=32))
    capsys.readouterr()
    train.warn_if_slow(model, datasets, cfg, torch.autocast('cpu', enabled=False), 1, 1, 0)
    out = capsys.readouterr().out
    assert 'an evaluation will take about' in out and 'config/train_shakespeare_char_cpu.py' in out
    cfg.eval_iters, cfg.max_iters = 2, 10
    train.warn_if_slow(model, datasets, cfg, torch.autocast('cpu', enabled=False), 1, 1, 0)
    assert capsys.readouterr().out == ''  # a quick run says nothing


def test_nan_from_scratch_does_not_mention_a_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    real_forward = train.GPT.forward
    monkeypatch.setattr(train.GPT, 'forward', lambda self, idx, targets=None, **kw: (
        real_forward(self, idx, targets, **kw)[0], real_forward(self, idx, targets, **kw)[1] * float('nan')))
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=3'])
    assert 'no checkpoint was written' in err and 'left as it was' not in err


def test_a_long_evaluation_shows_its_progress(data_dir, tmp_path, capsys, monkeypatch):
    cfg, _ = train.read_config([f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--eval_iters=3'])
    _, datasets = train.open_data(cfg)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=2, n_head=2, n_embd=32))
    seconds = iter(range(0, 10_000, 11))  # every look at the clock: 11 s later
    monkeypatch.setattr(train.time, 'time', lambda: next(seconds))
    capsys.readouterr()
    losses = train.estimate_loss(model, datasets, cfg, torch.autocast('cpu', enabled=False), torch.device('cpu'), 0, 1)
    lines = capsys.readouterr().out.splitlines()
    assert losses is not None and lines and all(l.startswith('  evaluating: ') and l.endswith(' left') for l in lines)
    assert lines[-1].startswith('  evaluating: 6/6 batches')
