"""
Tests of sample.py: end to end as a subprocess on tiny checkpoints made here (a character-level resume
checkpoint, a Hugging Face-format directory), and its errors, each one line and exit code 1.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import sample
from load_gpt2 import load_model, main as load_gpt2_main
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))
ITOS = list("\n !',.?abcdefghijklmnopqrstuvwxyz")


def perturbed(model, std=0.5, seed=0):
    """Weights far from GPT-2's small init, so that greedy choices are clear-cut, not near-ties."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def char_out_dir(tmp_path_factory):
    """out_dir/ckpt.pt of a character-level model with block_size 16, as train.py writes it."""
    out_dir = tmp_path_factory.mktemp("out-char")
    config = GPTConfig(block_size=16, vocab_size=len(ITOS), n_layer=2, n_head=2, n_embd=32)
    model = perturbed(GPT(config))
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(config), "optimizer": None,
                "iter_num": 10, "best_val_loss": 2.0, "config": {"dataset": "tiny_char"},
                "tokenizer": {"name": "char", "itos": ITOS}}, out_dir / "ckpt.pt")
    return str(out_dir)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny GPT-2 with GPT-2's vocabulary, saved by transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    torch.manual_seed(0)
    perturbed(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64)), std=0.3).save_pretrained(path)
    return str(path)


def run_sample(args, env=None):
    """sample.py with args in a fresh process, started now; call .communicate() for (stdout, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, os.path.join(HERE, "sample.py"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(runs):
    """(stdout of each run), checking that each exited 0."""
    outs = []
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out)
    return outs


def sample_in_process(capsys, *args):
    """(stdout, stderr) of sample.main(args): the same code without a new process's start-up cost."""
    sample.main(list(args))
    return capsys.readouterr()


def error_of(capsys, *args):
    """The error line of sample.main(args), which must exit with code 1."""
    with pytest.raises(SystemExit) as e:
        sample.main(list(args))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------------------------------
# End to end, as a subprocess (the runs of a test go in parallel)

def test_resume_char_model_seed_and_cache(char_out_dir):
    common = ["--init_from=resume", f"--out_dir={char_out_dir}", "--start=the "]
    sampled = ["--seed=7", "--temperature=1.0", "--top_k=None", "--max_new_tokens=30"]
    greedy = ["--temperature=0", "--max_new_tokens=40"]  # runs past block_size=16
    a, b, cached, uncached = finish([run_sample(common + sampled), run_sample(common + sampled),
                                     run_sample(common + greedy), run_sample(common + greedy + ["--use_cache=False"])])
    assert a == b and a.startswith("the ") and len(a) == len("the ") + 30 + 1  # a newline ends it
    assert cached == uncached and len(cached) == len("the ") + 40 + 1


def test_hf_directory_seed_and_cache(hf_dir, gpt2_bpe):
    common = [f"--init_from={hf_dir}", "--start=Hello, I'm a language model,", "--num_samples=2"]
    sampled = ["--seed=3", "--max_new_tokens=12"]
    # float32: in bfloat16 (auto on a CPU with fast bf16 kernels) this model's weights are rounded, and its near-ties
    # among 50257 logits can go either way between the cache's one-row products and the uncached many-row ones
    greedy = ["--temperature=0", "--max_new_tokens=24", "--dtype=float32"]
    a, b, cached, uncached = finish([run_sample(common + sampled), run_sample(common + sampled),
                                     run_sample(common + greedy), run_sample(common + greedy + ["--use_cache=False"])])
    assert a == b and a.count("Hello, I'm a language model,") == 2 and a.count("---------------\n") == 2
    first, second = a.split("---------------\n")[:2]
    assert first != second  # two samples, not one printed twice
    assert cached == uncached and len(cached.split("---------------\n")[0]) > len("Hello, I'm a language model,\n")


def test_error_exits_1_with_one_line_and_no_traceback(tmp_path):
    out, err = run_sample(["--init_from=resume", f"--out_dir={tmp_path}"]).communicate(timeout=120)
    assert err == f"error: no checkpoint at {tmp_path / 'ckpt.pt'}: train one with train.py, write GPT-2's there with " \
                  f"'python load_gpt2.py gpt2 --out={tmp_path / 'ckpt.pt'}', or use --init_from=gpt2\n"
    assert out == ""


# ----------------------------------------------------------------------------------------------------
# The same code, in this process

def test_one_sample_streams_as_it_is_generated(char_out_dir, monkeypatch):
    """Each token's text reaches stdout before the next token is chosen; a batch prints at the end."""
    made, writes = [0], []
    real = GPT.generate_tokens

    def counting(self, *args, **kwargs):
        for token in real(self, *args, **kwargs):
            made[0] += 1
            yield token

    class Terminal:
        def write(self, text):
            if text:
                writes.append(made[0])

        def flush(self):
            pass

    monkeypatch.setattr(GPT, "generate_tokens", counting)
    monkeypatch.setattr(sys, "stdout", Terminal())
    sample.main(["--init_from=resume", f"--out_dir={char_out_dir}", "--start=ab", "--max_new_tokens=10"])
    assert writes == list(range(11)) + [10]  # the prompt, one character per token as it comes, a newline
    made[0], writes[:] = 0, []
    sample.main(["--init_from=resume", f"--out_dir={char_out_dir}", "--start=ab", "--max_new_tokens=10",
                 "--num_samples=2"])
    assert writes and set(writes) == {10}  # all after the last token


def test_seed_changes_the_sample(char_out_dir, capsys):
    args = ["--init_from=resume", f"--out_dir={char_out_dir}", "--start=", "--temperature=1.0", "--max_new_tokens=30"]
    one, two = (sample_in_process(capsys, *args, f"--seed={seed}").out for seed in (1, 2))
    assert one != two and len(one) == len(two) == 31  # start='' is a newline for a character-level model: not printed


def test_long_prompt_is_cropped_with_a_warning(char_out_dir, capsys):
    prompt = "it was the best of times, it was the worst"
    out, err = sample_in_process(capsys, "--init_from=resume", f"--out_dir={char_out_dir}", f"--start={prompt}",
                                 "--max_new_tokens=5", "--temperature=0")
    assert f"warning: the prompt has {len(prompt)} tokens, more than the model's context of 16; keeping its last 16" in err
    assert out.startswith(prompt[-16:]) and len(out) == 16 + 5 + 1


def test_prompt_from_file(char_out_dir, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("once upon a time")
    out, _ = sample_in_process(capsys, "--init_from=resume", f"--out_dir={char_out_dir}",
                               f"--start=FILE:{tmp_path / 'prompt.txt'}", "--max_new_tokens=3")
    assert out.startswith("once upon a time") and len(out) == 16 + 3 + 1
    assert "cannot read the prompt file" in error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}",
                                                     f"--start=FILE:{tmp_path / 'missing.txt'}")


def test_overrides_reach_the_model(char_out_dir):
    model, tokenizer, _ = load_model("resume", char_out_dir, swa=True, window_size=4)
    assert model.config.swa and model.config.window_size == 4 and tokenizer == {"name": "char", "itos": ITOS}


def test_prompt_outside_char_vocabulary_names_the_characters(char_out_dir, capsys):
    err = error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}", "--start=Héllo, wörld")
    assert "outside the model's vocabulary of 33: 'H', 'é', 'ö'" in err


@pytest.mark.parametrize("damage, message", [
    (lambda path: open(path, "r+b").truncate(os.path.getsize(path) // 2), "cannot be read as a checkpoint; it may be truncated or corrupt"),
    (lambda path: torch.save({"model": {}, "iter_num": 3}, path), "lacks model_args"),
    (lambda path: torch.save({"model": {}, "model_args": {"n_layer": 0}}, path), "n_layer=0 must be a positive integer"),
], ids=["truncated", "without-model_args", "bad-model_args"])
def test_broken_checkpoint_is_one_clear_line(char_out_dir, tmp_path, capsys, damage, message):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(open(os.path.join(char_out_dir, "ckpt.pt"), "rb").read())
    damage(path)
    assert message in error_of(capsys, "--init_from=resume", f"--out_dir={tmp_path}")


@pytest.mark.parametrize("arg, message", [
    ("--temperature=-1", "temperature=-1.0 must be >= 0"),
    ("--top_p=1.5", "top_p=1.5 must be in (0, 1]"),
    ("--top_k=0", "top_k=0 must be a positive integer"),
    ("--num_samples=0", "num_samples=0 must be at least 1"),
    ("--dtype=float8", "dtype='float8' must be auto"),
    ("--device=tpu9", "device='tpu9' is no device"),
    ("--swa=maybe", "override swa='maybe' must be bool"),
    ("--tempreature=1", "unknown config key 'tempreature' (did you mean 'temperature'?)"),
])
def test_bad_options_are_one_clear_line(char_out_dir, capsys, arg, message):
    assert message in error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}", arg)


def test_no_network_on_first_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as good as no network, and never a real request
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    err = error_of(capsys)  # no arguments: GPT-2 124M
    assert "cannot download https://" in err and "/openai-community/gpt2/resolve/main/model.safetensors" in err
    assert f"place it at {tmp_path / 'empty-cache'}" in err


def test_bpe_resume_and_the_meta_json_fallback(hf_dir, tmp_path, monkeypatch, capsys, gpt2_bpe):
    """A checkpoint written by load_gpt2.py --out samples like the directory it came from; without
    tokenizer info it falls back to its dataset's meta.json."""
    load_gpt2_main([hf_dir, f"--out={tmp_path / 'out'}"])
    greedy = ["--start=The dog", "--temperature=0", "--max_new_tokens=8"]
    capsys.readouterr()
    from_dir = sample_in_process(capsys, f"--init_from={hf_dir}", *greedy).out
    resumed = sample_in_process(capsys, "--init_from=resume", f"--out_dir={tmp_path / 'out'}", *greedy).out
    assert resumed == from_dir and resumed.startswith("The dog")

    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    del ckpt["tokenizer"]
    ckpt["config"]["data_dir"] = str(tmp_path / "data")
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    assert "names no tokenizer, and there is no meta.json with one at" in error_of(
        capsys, "--init_from=resume", f"--out_dir={tmp_path / 'out'}")
    os.makedirs(tmp_path / "data")
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"vocab_size": 50257, "dtype": "uint16",
                                                             "tokenizer": {"name": "gpt2"}}))
    assert sample_in_process(capsys, "--init_from=resume", f"--out_dir={tmp_path / 'out'}", *greedy).out == from_dir



# ----------------------------------------------------------------------------------------------------
# A new user's mistakes, one line each

def test_a_character_model_starts_from_a_newline_by_default(char_out_dir, capsys):
    out = sample_in_process(capsys, "--init_from=resume", f"--out_dir={char_out_dir}", "--max_new_tokens=5").out
    assert out.startswith("\n") and len(out) == 1 + 5 + 1


def test_prompt_file_is_read_with_a_limit(char_out_dir, capsys):
    assert "holds more than 1,000,000 characters" in error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}",
                                                             "--start=FILE:/dev/zero")


def test_a_training_folder_as_init_from_points_to_resume(char_out_dir, capsys):
    err = error_of(capsys, f"--init_from={char_out_dir}")
    assert f"use --init_from=resume --out_dir={char_out_dir}" in err


def test_float16_on_a_cpu_is_refused_as_train_py_does(char_out_dir, capsys):
    assert "float16 on a CPU" in error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}",
                                          "--dtype=float16", "--device=cpu")


def test_offline_first_use_names_everything_missing_at_once(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # nothing listens there
    proc = run_sample([], env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "model.safetensors" in err and "GPT-2's BPE files" in err


def test_int8_weights_sample_alike_with_and_without_the_cache(char_out_dir, capsys):
    common = ["--init_from=resume", f"--out_dir={char_out_dir}", "--start=the ", "--temperature=0",
              "--max_new_tokens=20", "--quantize=int8", "--dtype=bfloat16", "--device=cpu"]
    cached = sample_in_process(capsys, *common)
    assert "int8 weights, bfloat16 activations" in cached.err
    assert sample_in_process(capsys, *common, "--use_cache=False").out == cached.out
    assert cached.out.startswith("the ") and len(cached.out) == len("the ") + 20 + 1


@pytest.mark.parametrize("args, message", [
    (["--quantize=int4"], "quantize='int4' must be int8 or None"),
    (["--quantize=int8", "--dtype=float32", "--device=cpu"], "quantize=int8 on a CPU needs dtype=bfloat16"),
])
def test_bad_quantize_is_one_clear_line(char_out_dir, capsys, args, message):
    assert message in error_of(capsys, "--init_from=resume", f"--out_dir={char_out_dir}", *args)
