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
    assert lines == ["generate, with cache", "decode step's matrix products alone", "generate, without cache"]
    assert run_bench("--train_steps=1").stdout.splitlines()[-1].startswith("train (forward, backward, AdamW step): ")
    result = run_bench("--train_steps=-1")
    assert result.returncode == 1 and result.stderr == "error: train_steps=-1 must be >= 0 (0 leaves training out)\n"


def test_matrix_products_alone_calls_every_linear_once_per_repeat_on_one_token_rows():
    import torch
    import bench
    from model import GPT, GPTConfig, prepare_for_generation_
    for quantize in (None, "int8"):
        model = prepare_for_generation_(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)),
                                        "cpu", torch.bfloat16, quantize)
        calls = []
        for m in bench.linear_layers(model):
            m.register_forward_hook(lambda m, args, out: calls.append((m, args[0].shape, args[0].dtype)))
        assert len(bench.linear_layers(model)) == 2 * 4 + 1  # four a block, and lm_head
        assert bench.matrix_products_seconds(model, 3, "cpu", repeats=2) > 0
        expected = [(m, (3, 1, m.weight.size(1)), torch.bfloat16) for m in bench.linear_layers(model)]
        assert calls == expected * 3  # a warm-up, then the repeats
