"""Tests of plot.py on fake out_dirs: what it reads from log.jsonl and ckpt.pt, the PNG, the message without matplotlib."""

import json
import sys

import pytest
import torch

import plot


def fake_run(path, hellaswag=False, ckpt=True):
    """An out_dir as train.py leaves it: steps and evals in log.jsonl (an eval_only appended at the end)."""
    path.mkdir()
    records = []
    for it in range(0, 101, 10):
        if it % 50 == 0:
            records.append({"iter": it, "train_loss": 3.0 - it / 100, "val_loss": 3.1 - it / 100,
                            **({"hellaswag": 0.25 + it / 1000} if hellaswag else {})})
        records.append({"iter": it, "loss": 3.0, "lr": 1e-3, "ms": 50.0, "tokens_per_sec": 768 / 0.05, "mfu": None,
                        "grad_norm": 1.0})
    records.append({"iter": 100, "train_loss": 1.95, "val_loss": 2.05})  # --eval_only=True, more batches
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if ckpt:
        torch.save({"model": {}, "model_args": {}, "config": {"batch_size": 12, "block_size": 64,
                                                               "gradient_accumulation_steps": 2}}, path / "ckpt.pt")
    return str(path)


def test_reads_evals_and_tokens_per_step(tmp_path):
    run = plot.read_run(fake_run(tmp_path / "a", hellaswag=True))
    assert run["name"] == "a" and run["tokens_per_step"] == 12 * 64 * 2  # from ckpt.pt's config
    assert run["evals"] == [(0, 3.0, 3.1, 0.25), (50, 2.5, 2.6, 0.3), (100, 1.95, 2.05, None)]  # the later iter 100
    assert plot.read_run(fake_run(tmp_path / "b", ckpt=False))["tokens_per_step"] == 768  # from the log's step time


def test_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "loss.png"
    plot.main([fake_run(tmp_path / "a", hellaswag=True), fake_run(tmp_path / "b"), f"--out={out}", "--title=t"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in capsys.readouterr().out


def test_without_matplotlib_one_line_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as e:
        plot.main([fake_run(tmp_path / "a"), f"--out={tmp_path / 'x.png'}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "pip install matplotlib" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, expected", [
    ([], "name at least one out_dir"),
    (["{tmp}/nothing"], "cannot read {tmp}/nothing/log.jsonl"),
    (["{tmp}", "--outt=x.png"], "unknown config key 'outt' (did you mean 'out'?)"),
])
def test_mistakes_are_one_line(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        plot.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith(f"error: {expected.format(tmp=tmp_path)}") and err.count("\n") == 1


def test_an_appended_log_plots_the_last_run_and_its_resumes(tmp_path):
    """log.jsonl is only appended to: a run started afresh over an earlier one (--overwrite=True) replaces it in
    the plot, a resume continues it."""
    path = tmp_path / "run"
    path.mkdir()
    start = lambda init_from: {"iter": 0, "event": "start", "init_from": init_from, "time": 0.0}
    ev = lambda it, train, val: {"iter": it, "train_loss": train, "val_loss": val}
    records = [start("scratch"), ev(0, 9.0, 9.0), ev(50, 8.0, 8.0), ev(100, 7.0, 7.0),  # an earlier run
               start("scratch"), ev(0, 3.0, 3.1), start("resume"), ev(50, 2.5, 2.6)]    # the last one, resumed
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot.read_run(str(path))["evals"] == [(0, 3.0, 3.1, None), (50, 2.5, 2.6, None)]
