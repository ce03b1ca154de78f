"""Faults a long run meets: torchrun's restarts continue the run, a dead or hung peer is one line, checkpoints
between evals. Two CPU processes with gloo, the tiny model and corpus of test_train.py."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import train
from test_train import HERE, TINY, data_dir, env, one_line_error, read_log, run_train, train_losses, worker_pids  # noqa: F401

JOB = ['--gradient_accumulation_steps=2', '--max_iters=60', '--eval_interval=60', '--save_interval=5']  # evals at 0, 60
PEER_LINE = 'a process of this job died or stopped answering'


class Job:
    """torchrun with 2 workers and up to 3 restarts, its output read as it comes, noting which attempts saved."""

    def __init__(self, data_dir, out_dir):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--max-restarts=3',
               os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY, *JOB]
        self.proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.stdout, self.stderr, self.saved_in, self.changed = [], [], set(), threading.Condition()
        self.readers = [threading.Thread(target=self.read, args=(pipe, lines), daemon=True)
                        for pipe, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()

    def read(self, pipe, lines):
        for line in pipe:
            with self.changed:
                lines.append(line.rstrip('\n'))
                if line.startswith('saved '):
                    self.saved_in.add(sum(l.startswith('restart ') for l in self.stdout))
                    self.changed.notify_all()

    def wait_for_a_save(self, attempt):
        with self.changed:
            assert self.changed.wait_for(lambda: attempt in self.saved_in, 120), '\n'.join(self.stderr[-40:])

    def wait(self):
        code = self.proc.wait(timeout=240)
        for reader in self.readers:
            reader.join()
        assert code == 0, '\n'.join(self.stderr[-40:])


def rank_pid(torchrun_pid, rank):
    """The pid of the worker of this rank, read from its environment in /proc."""
    for pid in worker_pids(torchrun_pid):
        with open(f'/proc/{pid}/environ', 'rb') as f:
            if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                return pid
    raise AssertionError(f"no worker of rank {rank}")


def kill_and_wait(pid):
    os.kill(pid, signal.SIGKILL)
    while True:  # until it is gone or a zombie
        try:
            with open(f'/proc/{pid}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def block_the_next_save(out_dir):
    """Make out_dir/ckpt.pt.tmp a named pipe, so that rank 0's next save stops in the middle of writing it; returns
    an event set once part of the checkpoint is written, and a list that then holds the pipe's reading end."""
    path, written, reader = os.path.join(out_dir, 'ckpt.pt.tmp'), threading.Event(), []
    while True:
        try:
            os.mkfifo(path)
            break
        except FileExistsError:  # a save is writing it now: the next one will meet the pipe
            time.sleep(0.001)

    def read_some():
        reader.append(open(path, 'rb'))
        reader[0].read(4096)
        written.set()

    threading.Thread(target=read_some, daemon=True).start()
    return written, reader


def iteration(line):
    return int(line.split(' at iteration ')[1].split()[0])


def test_killed_workers_are_restarted_and_the_run_continues_exactly(data_dir, tmp_path):
    """One job, three kills: rank 1 after a save, rank 0 after a save, rank 0 in the middle of writing a save.
    torchrun restarts the workers each time with the same command line (init_from scratch)."""
    unbroken_job, out = Job(data_dir, tmp_path / 'unbroken'), tmp_path / 'killed'  # at the same time: less waiting
    job = Job(data_dir, out)
    for attempt, victim in enumerate((1, 0, 0)):
        job.wait_for_a_save(attempt)
        if attempt == 2:
            written, reader = block_the_next_save(out)
            assert written.wait(60), "rank 0 never wrote to ckpt.pt.tmp"
        kill_and_wait(rank_pid(job.proc.pid, victim))
    os.remove(out / 'ckpt.pt.tmp')  # the pipe: the last restart must be able to save again
    reader[0].close()
    job.wait()
    unbroken_job.wait()

    # each restart resumed the last whole checkpoint (a kill in a save cannot leave half of one, but a kill just
    # after rank 0 wrote one can come before its log line), and said so in one line
    starts = [e for e in read_log(out) if e.get('event') == 'start']
    assert [(e['init_from'], e['restart']) for e in starts] == [('scratch', 0), ('resume', 1), ('resume', 2),
                                                                ('resume', 3)]
    restarts = [i for i, l in enumerate(job.stdout) if l.startswith('restart ')]
    for k, (start, line) in enumerate(zip(starts[1:], (job.stdout[i] for i in restarts)), 1):
        saves = [iteration(l) for l in job.stdout[:restarts[k - 1]] if l.startswith('saved ')]
        assert line.startswith(f'restart {k} of torchrun job ') and f'resuming {out}/ckpt.pt at iteration' in line
        assert iteration(line) == start['iter'] and start['iter'] in ((saves[-1],) if k == 3 else
                                                                      (saves[-1], saves[-1] + 5)), (line, saves)
    # each survivor said what happened in one line, and no worker printed a traceback
    survivors = [l[:len('error: rank 0')] for l in job.stderr if PEER_LINE in l]
    assert survivors == ['error: rank 0', 'error: rank 1', 'error: rank 1'], job.stderr
    assert not any('Traceback' in l or '[rank' in l for l in job.stderr), job.stderr
    # every loss any attempt logged, and the final weights, are those of the run without the kills
    losses = train_losses(tmp_path / 'unbroken')
    logged = [(e['iter'], e['loss']) for e in read_log(out) if 'loss' in e]
    assert sorted({i for i, _ in logged}) == list(range(60)) and all(loss == losses[i] for i, loss in logged)
    final, unbroken = (torch.load(d / 'ckpt.pt', map_location='cpu', weights_only=True)
                       for d in (out, tmp_path / 'unbroken'))
    assert final['iter_num'] == 60 and final['run_id'] == job.stdout[restarts[0]].split('job ')[1].split(':')[0]
    assert all(torch.equal(v, unbroken['model'][k]) for k, v in final['model'].items())


def test_a_hung_peer_is_one_line_after_dist_timeout(data_dir, tmp_path):
    """A rank that stops answering (SIGSTOP: a lost node looks the same): the other stops after dist_timeout."""
    port = 29500 + (os.getpid() + 500) % 1000
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}',
                               f'--out_dir={tmp_path}', *TINY, '--gradient_accumulation_steps=2', '--dist_timeout=3',
                               '--max_iters=100000', '--eval_interval=100000'],
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                                      MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for r in range(2)]
    try:
        for line in procs[0].stdout:
            if line.startswith('iter 3/'):
                break
        procs[1].send_signal(signal.SIGSTOP)
        start = time.time()
        _, err = procs[0].communicate(timeout=60)
        took = time.time() - start
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1 and 2.5 < took < 15, (took, err[-3000:])
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'error: rank 0: {PEER_LINE} (Timed out waiting 3000ms') and '--max-restarts' in err


# ----------------------------------------------------------------------------------------------------
# how a restarted worker knows its job's checkpoint (torchrun's run id and restart count, set here by hand)

def test_a_restart_resumes_only_the_checkpoint_its_job_wrote(data_dir, tmp_path, capsys, monkeypatch):
    base = [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--max_iters=4', '--eval_interval=2']
    monkeypatch.setattr(train, 'JOB_ID', 'job-a')
    monkeypatch.setattr(train, 'RESTART', 1)
    train.main(base)  # no checkpoint yet: it starts as its command line says
    assert 'restart 1 of torchrun job job-a: it has saved no checkpoint yet' in capsys.readouterr().out
    assert torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)['run_id'] == 'job-a'

    monkeypatch.setattr(train, 'RESTART', 2)
    train.main([*base, '--max_iters=6', '--init_from=gpt2'])  # the job's own checkpoint, whatever init_from says
    out = capsys.readouterr().out
    assert f'restart 2 of torchrun job job-a: resuming {tmp_path}/ckpt.pt at iteration 4' in out
    assert 'changed: max_iters=6 (was 4)' in out and sorted(train_losses(tmp_path)) == list(range(6))

    good = (tmp_path / 'ckpt.pt').read_bytes()
    monkeypatch.setattr(train, 'JOB_ID', 'job-b')  # another job's checkpoint is refused as before
    assert 'holds the ckpt.pt of an earlier run' in one_line_error(capsys, base)
    monkeypatch.setattr(train, 'JOB_ID', None)  # torchrun's id 'none' tells no job from another
    assert '--rdzv-id=' in one_line_error(capsys, base)
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


def test_a_checkpoint_without_a_run_id_still_resumes_but_is_no_jobs(data_dir, tmp_path, capsys, monkeypatch):
    run_train(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2')
    ckpt = torch.load(tmp_path / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt.pop('run_id') is None  # not under torchrun
    torch.save(ckpt, tmp_path / 'ckpt.pt')  # as written before run ids
    monkeypatch.setattr(train, 'JOB_ID', 'job-a')
    monkeypatch.setattr(train, 'RESTART', 1)
    assert 'holds the ckpt.pt of an earlier run' in one_line_error(capsys, [f'--data_dir={data_dir}',
                                                                            f'--out_dir={tmp_path}', *TINY])
    run_train(data_dir, tmp_path, '--max_iters=4', '--init_from=resume')
    assert sorted(train_losses(tmp_path)) == list(range(4))


# ----------------------------------------------------------------------------------------------------
# save_interval: checkpoints between evals

def test_save_interval_saves_between_evals_says_its_cost_once_and_changes_nothing(data_dir, tmp_path, capsys):
    run_train(data_dir, tmp_path / 'plain', '--max_iters=8', '--eval_interval=8')
    capsys.readouterr()
    run_train(data_dir, tmp_path / 'saving', '--max_iters=8', '--eval_interval=8', '--save_interval=2')
    saves = [l for l in capsys.readouterr().out.splitlines() if l.startswith('saved ')]
    assert [l.split('iteration ')[1].split()[0] for l in saves] == ['2', '4', '6', '8']
    assert ' s, ' in saves[0] and '% of the time of save_interval=2 steps' in saves[0]  # the cost, once
    assert all(l.endswith(f'at iteration {i}') for l, i in zip(saves[1:], (4, 6, 8)))
    assert train_losses(tmp_path / 'saving') == train_losses(tmp_path / 'plain')
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', map_location='cpu', weights_only=True) for d in ('plain', 'saving'))
    assert all(torch.equal(v, b['model'][k]) for k, v in a['model'].items())


def test_save_interval_never_saves_unsound_weights_and_resumes_exactly(data_dir, tmp_path, capsys, monkeypatch):
    run_train(data_dir, tmp_path / 'plain', '--max_iters=8', '--eval_interval=8')
    out = tmp_path / 'saving'
    real, steps = train.configure_optimizer, []

    def poisoned(*args):  # the step of iteration 5 leaves a NaN weight; its own loss was finite
        optimizer = real(*args)
        step = optimizer.step

        def step_then_poison(*a, **k):
            step(*a, **k)
            steps.append(1)
            if len(steps) == 6:
                with torch.no_grad():
                    optimizer.param_groups[0]['params'][0].view(-1)[0] = float('nan')
        optimizer.step = step_then_poison
        return optimizer

    with monkeypatch.context() as m:
        m.setattr(train, 'configure_optimizer', poisoned)
        err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={out}', *TINY, '--max_iters=8',
                                      '--eval_interval=8', '--save_interval=3'])
    assert err == 'error: the weights give a loss of nan at iteration 6; ckpt.pt is left as it was (saved at iteration 3)'
    assert torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['iter_num'] == 3
    run_train(data_dir, out, '--max_iters=8', '--init_from=resume')
    assert train_losses(out) == train_losses(tmp_path / 'plain')  # steps 3-7 again, as without the stop


def test_save_interval_and_keeping_the_best_checkpoint_exclude_each_other(data_dir, tmp_path, capsys):
    err = one_line_error(capsys, [f'--data_dir={data_dir}', f'--out_dir={tmp_path}', *TINY, '--save_interval=100',
                                  '--always_save_checkpoint=False'])
    assert 'save_interval=100' in err and 'always_save_checkpoint=False' in err
    assert 'save_interval must not be negative' in one_line_error(capsys, [f'--data_dir={data_dir}', *TINY,
                                                                           f'--out_dir={tmp_path}', '--save_interval=-1'])
