"""bench.py's command line on a tiny model: which lines it prints."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--vocab_size=64", "--prompt_len=4",
        "--max_new_tokens=4", "--train_batch_size=1", "--train_seq_len=8", "--device=cpu", "--dtype=float32"]


def run_bench(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), *TINY, *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_train_steps_zero_leaves_the_train_line_out():
    lines = [l.split(":")[0] for l in run_bench("--train_steps=0").stdout.splitlines()[1:]]
    assert lines == ["generate, with cache", "generate, without cache"]
    assert run_bench("--train_steps=1").stdout.splitlines()[-1].startswith("train (forward, backward, AdamW step): ")
    result = run_bench("--train_steps=-1")
    assert result.returncode == 1 and result.stderr == "error: train_steps=-1 must be >= 0 (0 leaves training out)\n"
