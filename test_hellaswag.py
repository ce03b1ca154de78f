"""
Tests of hellaswag.py on a small fixture in HellaSwag's own format, against a scoring written independently
here (one token at a time from log-softmax, no padding); the dealing over ranks; the download's checks.
"""

import json

import pytest
import torch

import hellaswag
from model import GPT, GPTConfig

# six examples with every field of hellaswag_val.jsonl (contexts and endings written for this test)
FIXTURE = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Baking cookies", "ctx_a": "A woman pours flour into a bowl.", "ctx_b": "she",
     "ctx": "A woman pours flour into a bowl. she", "split": "val", "split_type": "zeroshot", "label": 0,
     "endings": ["adds two eggs and stirs.", "paints the bowl blue.", "throws the bowl at a dog in the yard, laughing.",
                 "reads."], "source_id": "activitynet~v_fixture1"},
    {"ind": 106, "activity_label": "Home and Garden", "ctx_a": "[header] How to water a cactus [title] Check the soil.",
     "ctx_b": "", "ctx": "[header] How to water a cactus [title] Check the soil.", "split": "val",
     "split_type": "indomain", "label": 1, "endings": [
         "[step] Cacti like to swim in the ocean every morning.",
         "[step] Water only when the top inch is dry. Cacti store water in their stems.",
         "[step] Sing to it.", "[step] Buy a new house."], "source_id": "wikihow~fixture2"},
    {"ind": 7, "activity_label": "Playing guitar", "ctx_a": "A boy holds a guitar on his lap.", "ctx_b": "the boy",
     "ctx": "A boy holds a guitar on his lap. the boy", "split": "val", "split_type": "indomain", "label": 2,
     "endings": ["eats the guitar.", "flies away over the mountains of Peru.", "strums the strings and sings.",
                 "sleeps."], "source_id": "activitynet~v_fixture3"},
    {"ind": 311, "activity_label": "Running a marathon", "ctx_a": "Runners line up at the start.", "ctx_b": "they",
     "ctx": "Runners line up at the start. they", "split": "val", "split_type": "zeroshot", "label": 0,
     "endings": ["run down the street as people cheer.", "sit.", "turn into birds.", "cook pasta for 3,000 people."],
     "source_id": "activitynet~v_fixture4"},
    {"ind": 5000, "activity_label": "Café", "ctx_a": "Un café au lait, s'il vous plaît —", "ctx_b": "the waiter",
     "ctx": "Un café au lait, s'il vous plaît — the waiter", "split": "val", "split_type": "zeroshot", "label": 1,
     "endings": ["nods.", "brings a cup of café au lait with a smile.", "swims.", "is a piano."],
     "source_id": "activitynet~v_fixture5"},
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in FIXTURE), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # weights spread wide, so that the four endings' losses differ clearly
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m


def independent_scores(model, enc, example, block_size):
    """(summed, mean) log-loss of each ending, token by token: -log p(token | all before it), no batching."""
    summed, mean = [], []
    for ending in example["endings"]:
        ctx, end = enc.encode_ordinary(example["ctx"]), enc.encode_ordinary(" " + ending)
        tokens = (ctx + end)[-block_size:]
        n_end = min(len(end), len(tokens) - 1)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([tokens]))[0][0].double(), dim=-1)
        nll = [-logp[t - 1, tokens[t]].item() for t in range(len(tokens) - n_end, len(tokens))]
        summed.append(sum(nll))
        mean.append(sum(nll) / len(nll))
    return summed, mean


def test_scores_match_an_independent_scoring(gpt2_bpe, model, data_file):
    examples = hellaswag.load({"name": "gpt2"}, model.config.block_size, str(data_file))
    assert len(examples) == len(FIXTURE)
    assert any(len(r) == 32 for rows, _, _ in examples for r in rows)  # some rows were cropped to block_size
    right_norm = right = 0
    for (rows, starts, label), ex in zip(examples, FIXTURE):
        summed, mean = hellaswag.ending_losses(model, rows, starts, "cpu", torch.no_grad())
        want_summed, want_mean = independent_scores(model, gpt2_bpe, ex, model.config.block_size)
        torch.testing.assert_close(summed.double(), torch.tensor(want_summed, dtype=torch.float64), atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(mean.double(), torch.tensor(want_mean, dtype=torch.float64), atol=1e-4, rtol=1e-5)
        right_norm += min(range(4), key=want_mean.__getitem__) == ex["label"]
        right += min(range(4), key=want_summed.__getitem__) == ex["label"]
    result = hellaswag.evaluate(model, examples, "cpu")
    assert result == {"acc_norm": right_norm / 6, "acc": right / 6, "n": 6}
    assert right_norm != right  # the fixture and model tell the two accuracies apart


def test_dealt_over_ranks_each_example_once_with_equal_forwards(gpt2_bpe, model, data_file, monkeypatch):
    examples = hellaswag.load({"name": "gpt2"}, model.config.block_size, str(data_file))[:5]  # 5 over 2 ranks
    whole = hellaswag.evaluate(model, examples, "cpu")
    monkeypatch.setattr(hellaswag.dist, "all_reduce", lambda t: None)  # each rank's own counts
    original, calls = hellaswag.ending_losses, []
    monkeypatch.setattr(hellaswag, "ending_losses", lambda *a: calls.append(1) or original(*a))
    forwards, parts = [], []
    for rank in range(2):
        before = len(calls)
        parts.append(hellaswag.evaluate(model, examples, "cpu", rank=rank, world_size=2))
        forwards.append(len(calls) - before)
    assert forwards == [3, 3] and [p["n"] for p in parts] == [3, 2]
    assert sum(p["acc_norm"] * p["n"] for p in parts) == pytest.approx(whole["acc_norm"] * 5)
    assert sum(p["acc"] * p["n"] for p in parts) == pytest.approx(whole["acc"] * 5)
    assert not model.training


def test_a_char_model_or_a_bad_file_is_one_clear_error(tmp_path):
    with pytest.raises(hellaswag.HellaSwagError, match="GPT-2's tokens"):
        hellaswag.load({"name": "char", "itos": list("ab")}, 32, "unused")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**FIXTURE[0], "endings": ["a", "b", "c"]}) + "\n")
    with pytest.raises(hellaswag.HellaSwagError, match="line 1 is no HellaSwag example"):
        hellaswag.read_examples(str(bad))


def test_download_is_checked_then_cached(tmp_path, monkeypatch, data_file):
    monkeypatch.setenv("HELLASWAG_CACHE", str(tmp_path))
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        with open(dest, "w") as f:
            f.write(data_file.read_text())
        return dest
    monkeypatch.setattr(hellaswag, "download", fake_download)
    with pytest.raises(hellaswag.HellaSwagError, match="holds 6 examples where HellaSwag's val split has 10,042"):
        hellaswag.fetch_val_split()
    assert list(tmp_path.iterdir()) == []  # the wrong file is deleted
    monkeypatch.setattr(hellaswag, "N_VAL", 6)
    assert hellaswag.fetch_val_split() == str(tmp_path / "hellaswag_val.jsonl") == hellaswag.fetch_val_split()
    assert fetched == [hellaswag.URL] * 2  # the second call used the cache


def test_command_line(gpt2_bpe, model, data_file, tmp_path, capsys):
    import dataclasses
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                "tokenizer": {"name": "gpt2"}}, tmp_path / "ckpt.pt")
    hellaswag.main(["--init_from=resume", f"--out_dir={tmp_path}", f"--data={data_file}", "--limit=4"])
    out, err = capsys.readouterr()
    assert out.startswith("resume: 4 examples, acc_norm ") and "hellaswag: 4/4" in err
    with pytest.raises(SystemExit) as e:
        hellaswag.main(["--init_from=resume", f"--out_dir={tmp_path}", f"--data={tmp_path / 'missing.jsonl'}"])
    assert e.value.code == 1 and capsys.readouterr().err.startswith("error: cannot read")


def test_train_scores_hellaswag_at_each_eval(gpt2_bpe, data_file, tmp_path, monkeypatch, capsys):
    import numpy as np
    import train
    monkeypatch.setenv("HELLASWAG_CACHE", str(data_file.parent))  # the fixture as the cached val file
    monkeypatch.setattr(hellaswag, "N_VAL", len(FIXTURE))
    ids = np.array(gpt2_bpe.encode_ordinary(" ".join(ex["ctx"] for ex in FIXTURE) * 20), dtype=np.uint16)
    (tmp_path / "data").mkdir()
    ids.tofile(tmp_path / "data" / "train.bin")
    ids.tofile(tmp_path / "data" / "val.bin")
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"vocab_size": 50257, "dtype": "uint16",
                                                             "tokenizer": {"name": "gpt2"}}))
    train.main([f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=32", "--batch_size=2", "--device=cpu", "--compile=False",
                "--dtype=float32", "--eval_iters=1", "--eval_interval=2", "--max_iters=2", "--warmup_iters=1",
                "--gradient_accumulation_steps=1", "--hellaswag=True"])
    evals = [e for e in map(json.loads, (tmp_path / "out" / "log.jsonl").read_text().splitlines()) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 2] and all(e["hellaswag"] in [k / 6 for k in range(7)] for e in evals)
    assert f"eval 2: train loss {evals[1]['train_loss']:.4f}, val loss {evals[1]['val_loss']:.4f}, " \
           f"hellaswag {evals[1]['hellaswag']:.4f}" in capsys.readouterr().out
