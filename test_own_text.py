"""
The README's "your own text", end to end, as a user types it: a text file prepared into data/<name>/ by a
prepare.py (--input, --out_dir), trained on with --dataset=<name>, sampled from. Character-level and GPT-2 BPE.
train.py finds data/<name> next to itself, so the scripts run from a copy in a temporary folder: the test writes
nothing into this repository's data/.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "".join(f"{i}: the quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" for i in range(40))
SMALL = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--max_iters=4",
         "--eval_interval=4", "--eval_iters=1", "--warmup_iters=1", "--lr_decay_iters=4", "--log_interval=1"]


def checkout_copy(tmp_path):
    """The scripts, config/ and data/*/prepare.py copied into tmp_path/repo, with the user's text beside them."""
    root = tmp_path / "repo"
    for path in glob.glob(os.path.join(HERE, "*.py")) + glob.glob(os.path.join(HERE, "config", "*.py")) + \
            glob.glob(os.path.join(HERE, "data", "*", "prepare.py")):
        target = root / os.path.relpath(path, HERE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (root / "my.txt").write_text(TEXT, encoding="utf-8")
    return root


def run(root, *command):
    """A command in the copy, as a user runs it; its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    return result.stdout


def test_train_and_sample_a_character_level_model_on_your_own_text(tmp_path):
    root = checkout_copy(tmp_path)
    run(root, "data/shakespeare_char/prepare.py", "--input=my.txt", "--out_dir=data/mytext")
    run(root, "train.py", "config/train_shakespeare_char_cpu.py", "--dataset=mytext", "--out_dir=out-mytext", *SMALL)
    ckpt = torch.load(root / "out-mytext" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == 4 and ckpt["tokenizer"] == {"name": "char", "itos": sorted(set(TEXT))}
    assert ckpt["config"]["data_dir"] == str(root / "data" / "mytext")  # the copy's data/<name>, not the repo's
    out = run(root, "sample.py", "--init_from=resume", "--out_dir=out-mytext", "--start=the quick",
              "--max_new_tokens=40")
    assert out.startswith("the quick") and len(out) == len("the quick") + 40 + 1 and set(out) <= set(TEXT)
    assert not os.path.exists(os.path.join(HERE, "data", "mytext"))


def test_fine_tune_gpt2_on_your_own_text_in_its_tokens(tmp_path, gpt2_bpe):
    from transformers import GPT2Config, GPT2LMHeadModel
    root = checkout_copy(tmp_path)
    torch.manual_seed(0)  # a tiny GPT-2 in Hugging Face's format stands in for --init_from=gpt2 (no network here)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(root / "tiny-gpt2")
    run(root, "data/shakespeare/prepare.py", "--input=my.txt", "--out_dir=data/mytext_bpe")
    assert json.loads((root / "data" / "mytext_bpe" / "meta.json").read_text())["tokenizer"] == {"name": "gpt2"}
    run(root, "train.py", "config/finetune_shakespeare.py", "--dataset=mytext_bpe", "--out_dir=out-mytext-bpe",
        "--init_from=tiny-gpt2", "--block_size=16", "--batch_size=2", "--gradient_accumulation_steps=1",
        "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu", "--compile=False")
    ckpt = torch.load(root / "out-mytext-bpe" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == 2 and ckpt["tokenizer"] == {"name": "gpt2"}
    assert ckpt["model_args"]["block_size"] == 16 and ckpt["config"]["dataset"] == "mytext_bpe"
    out = run(root, "sample.py", "--init_from=resume", "--out_dir=out-mytext-bpe", "--start=the quick brown",
              "--max_new_tokens=5", "--temperature=0")
    assert out.startswith("the quick brown") and len(out) > len("the quick brown\n")  # and 5 tokens' text
    assert not os.path.exists(os.path.join(HERE, "data", "mytext_bpe"))
