"""
The path a GPU user runs by default, compiled, on a CPU: torch.compile with backend aot_eager traces the same graphs
as inductor (dynamo's graph breaks, guards and recompiles, AOTAutograd's backward, DDP and FSDP2 around compiled
code) but runs them eagerly, so these tests take seconds and give eager's numbers. train.py prints what dynamo did
("torch.compile: N graphs compiled, M graph breaks"), which is how the torchrun workers are counted.
"""

import os
import re
import signal
import subprocess
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import hellaswag
import train
from model import GPT, GPTConfig
from test_hellaswag import data_file  # noqa: F401 (the HellaSwag fixture, six examples of 11-32 tokens)
from test_train import (HERE, TINY, data_dir, env, one_line_error, train_losses, val_losses,  # noqa: F401
                        wait_for)

COMPILED = ['--compile=True', '--compile_backend=aot_eager']
# every switch off; and rope+gqa+swa with a block (16) longer than the window (8), so that attention is chunked
SWITCHES = {'off': [], 'rope+gqa+swa': ['--rope=True', '--gqa=True', '--n_kv_head=1', '--swa=True',
                                        '--window_size=8']}


def compiled_run(data_dir, out_dir, *args):
    """train.main compiled, in this process, from a clean dynamo; returns its counts (graphs, graph breaks, failed
    backward compiles)."""
    torch._dynamo.reset()
    counters.clear()
    train.main([f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY, *COMPILED, *args])
    return counters['stats']['unique_graphs'], sum(counters['graph_break'].values()), counters['aot_autograd']['not_ok']


def relative_close(a, b, tol=1e-5):
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol * abs(b[k]) for k in a)


@pytest.mark.parametrize('switches', SWITCHES)
def test_one_process_compiled_stops_resumes_and_gives_eager_losses(data_dir, tmp_path, monkeypatch, switches):
    common = ['--max_iters=8', '--eval_interval=3', *SWITCHES[switches]]
    train.main([f'--data_dir={data_dir}', f'--out_dir={tmp_path / "eager"}', *TINY, *common])
    real_get_lr = train.get_lr

    def signal_at_step_4(it, cfg):  # a real SIGTERM to this process, while step 4 runs
        if it == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_get_lr(it, cfg)

    with monkeypatch.context() as m:
        m.setattr(train, 'get_lr', signal_at_step_4)
        counts = compiled_run(data_dir, tmp_path / 'compiled', *common)
    ckpt = torch.load(tmp_path / 'compiled' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 5
    assert 'compile_backend' not in train.saved_config(ckpt)  # a resume on another machine chooses anew, as compile
    # one graph for training, one for evaluation (eval mode, no_grad) however many evals; no break, backward compiled
    assert counts == (2, 0, 0)
    assert compiled_run(data_dir, tmp_path / 'compiled', *common, '--init_from=resume') == (2, 0, 0)
    assert sorted(train_losses(tmp_path / 'compiled')) == list(range(8))
    assert relative_close(train_losses(tmp_path / 'compiled'), train_losses(tmp_path / 'eager'))
    assert relative_close(val_losses(tmp_path / 'compiled'), val_losses(tmp_path / 'eager'))


def torchrun(data_dir, out_dir, *args, stop_after=None):
    """train.py compiled under torchrun (2 gloo processes); with stop_after, every process is sent SIGTERM once
    that iteration is logged. Returns rank 0's (graphs, graph breaks) and its output."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY, *COMPILED, *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if stop_after is not None:
        wait_for(proc, f'iter {stop_after}/')
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun and its workers, as a job cancel does
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 or stop_after is not None, out[-2000:] + err[-3000:]  # torchrun: 1 when signalled
    counts = re.search(r'torch.compile: (\d+) graphs compiled, (\d+) graph breaks', out)
    assert counts, out[-2000:] + err[-3000:]
    graphs, breaks = map(int, counts.groups())
    return graphs, breaks, out


@pytest.mark.parametrize('parallel, switches, graphs', [
    ('ddp', 'off', 2),  # the whole model: training and evaluation
    ('ddp', 'rope+gqa+swa', 2),
    ('fsdp', 'off', 2),  # each Block compiled, the Blocks sharing their two graphs
    ('fsdp', 'rope+gqa+swa', 2),
])
def test_ddp_and_fsdp_compiled_stop_resume_and_give_eager_losses(data_dir, tmp_path, parallel, switches, graphs):
    common = ['--gradient_accumulation_steps=2', '--eval_interval=2', f'--parallel={parallel}', *SWITCHES[switches]]
    counts = torchrun(data_dir, tmp_path / 'run', *common, '--max_iters=100000', stop_after=3)
    assert counts[:2] == (graphs, 0) and 'stopped by a signal: saved' in counts[2]
    stopped = torch.load(tmp_path / 'run' / 'ckpt.pt', weights_only=True)['iter_num']
    assert stopped >= 4
    counts = torchrun(data_dir, tmp_path / 'run', *common, f'--max_iters={stopped + 2}', '--init_from=resume')
    assert counts[:2] == (graphs, 0)
    train.main([f'--data_dir={data_dir}', f'--out_dir={tmp_path / "eager"}', *TINY, *common,
                f'--max_iters={stopped + 2}'])
    assert sorted(train_losses(tmp_path / 'run')) == list(range(stopped + 2))
    assert relative_close(train_losses(tmp_path / 'run'), train_losses(tmp_path / 'eager'))
    evals = val_losses(tmp_path / 'run')
    assert relative_close(evals, {k: v for k, v in val_losses(tmp_path / 'eager').items() if k in evals})


@pytest.mark.parametrize('switches', ['off', 'rope+gqa+swa'])
def test_hellaswag_and_evals_under_compile_compile_a_bounded_number_of_graphs(gpt2_bpe, data_file, tmp_path,
                                                                              switches):
    """HellaSwag's rows have many lengths (here 11 to 32 tokens): dynamo's automatic dynamic shapes give one graph
    for all of them after the first, two under SWA (rows within the window, rows past it), whatever the number
    of examples and evals; the scores are eager's."""
    sw = dict(rope=True, gqa=True, n_kv_head=1, swa=True, window_size=20) if switches != 'off' else {}
    examples = hellaswag.load({'name': 'gpt2'}, 32, str(data_file))
    lengths = [len(r) for rows, _, _ in examples for r in rows]
    assert min(lengths) < 20 < max(lengths) == 32
    ids = np.random.default_rng(0).integers(0, 50257, size=2000).astype(np.uint16)
    ids.tofile(tmp_path / 'tokens.bin')
    ds = train.GPT2TrainingDataset(str(tmp_path / 'tokens.bin'), 32, 'uint16')
    cfg = SimpleNamespace(eval_iters=2, batch_size=3, seed=0)
    models = []
    for _ in ('eager', 'compiled'):
        torch.manual_seed(0)
        models.append(GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=16, **sw)))
    torch._dynamo.reset()
    counters.clear()
    models[1].compile(backend='aot_eager')
    results = []
    for model in models:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(2):  # a training step, then an eval with HellaSwag, twice
            x, y = ds.batch(train.draw_offsets(0, 0, step, (3,), len(ds)), torch.device('cpu'))
            model(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
            results.append(train.estimate_loss(model, {'train': ds, 'val': ds}, cfg, nullcontext(),
                                               torch.device('cpu'), 0, 1, examples))
    assert results[2:] == results[:2]  # compiled == eager
    assert counters['stats']['unique_graphs'] == (4 if sw else 3) and not counters['graph_break']


def test_an_unknown_backend_is_one_line_and_writes_nothing(data_dir, tmp_path, capsys):
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--compile=True',
                                  '--compile_backend=inductr'])
    assert "compile_backend='inductr'" in err and "'inductor'" in err and os.listdir(tmp_path) == []


def test_a_training_step_reads_the_device_once(data_dir, tmp_path, monkeypatch):
    """Host syncs in the training step: one read per step (the loss over the ranks and the stop flag, for the
    finite check, the log line and the stop), one more at a log line (the grad norm), and no copy from the host.
    Counted in eager mode on a CPU, where clipping reads one more number (a host tensor there; on a GPU the
    scale stays on the device): the same calls are syncs on a GPU."""
    events = []
    for name in ('item', 'tolist', '__bool__', '__float__', '__int__'):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _real=real, _name=name: (events.append(_name),
                                                                                        _real(t, *a))[1])
    real_tensor, real_get_lr = torch.tensor, train.get_lr
    monkeypatch.setattr(torch, 'tensor', lambda *a, **k: (events.append('torch.tensor'), real_tensor(*a, **k))[1])
    monkeypatch.setattr(train, 'get_lr', lambda it, cfg: (events.append(('step', it)), real_get_lr(it, cfg))[1])
    train.main([f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=6', '--eval_interval=100',
                '--log_interval=2'])
    starts = [i for i, e in enumerate(events) if isinstance(e, tuple)]
    steps = [events[a + 1:b] for a, b in zip(starts, starts[1:])]  # steps 0-4: no eval, no save follows them
    clip, step, log_line = ['item'], ['tolist'], ['item']
    assert steps == [clip + step + log_line, clip + step] * 2 + [clip + step + log_line], steps


def test_bench_with_compile_reports_training_compiled_beside_eager(monkeypatch, capsys):
    import bench
    monkeypatch.setattr(bench, 'bench_generation', lambda *args, **kwargs: (0.1, 1.0))  # (first token s, tokens/s): not this test's
    monkeypatch.setattr(bench, 'bench_training', lambda config, cfg, *args: 200.0 if cfg['compile'] else 100.0)
    monkeypatch.setattr(sys, 'argv', ['bench.py', '--compile=True', '--n_layer=1', '--n_head=2', '--n_embd=16',
                                      '--block_size=256', '--vocab_size=64', '--device=cpu', '--dtype=float32'])
    bench.main()
    out = capsys.readouterr().out
    assert 'train (forward, backward, AdamW step):    100.0 tokens/s, compiled 200.0 tokens/s' in out
