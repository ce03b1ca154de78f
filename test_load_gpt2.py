"""
Tests of load_gpt2.py: parity with transformers' GPT2LMHeadModel for both file layouts, the overrides,
refusal of bad files, and the downloads, against a local HTTP server (no network needed).
"""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

import download as dl
import load_gpt2 as lg
from load_gpt2 import DownloadError, LoadError, load_gpt2

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_hf(n_embd=32, n_head=4, n_layer=2, n_positions=32, vocab_size=100, seed=0):
    """A random GPT-2 whose weights are perturbed to std 0.2: at GPT-2's 0.02 a wrong GELU or LayerNorm eps
    would hide under the tolerance."""
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_head=n_head, n_layer=n_layer, n_positions=n_positions,
                                    vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    return hf


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf_model.save_pretrained(path)
    return path


def logits_of(model, idx):
    with torch.no_grad():
        return model.eval()(idx)[0]


def hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


IDX = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------------
# Layouts and parity

@pytest.mark.parametrize("as_file", [False, True], ids=["directory", "safetensors-file"])
def test_save_pretrained_matches_transformers(hf_model, hf_dir, as_file):
    # head size 8, not GPT-2's 64: right only if n_head comes from the config.json beside the weights
    model = load_gpt2(str(hf_dir / "model.safetensors") if as_file else str(hf_dir))
    assert model.config.n_head == 4 and model.config.vocab_size == 100 and model.config.block_size == 32
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(logits_of(model, IDX), hf_logits(hf_model, IDX), atol=1e-4, rtol=0)


def test_hub_original_layout_matches_transformers(tmp_path):
    """The hub's own files: no 'transformer.' prefix, causal-mask buffers, no lm_head; here no config.json
    either, so the configuration comes from the shapes (n_head = n_embd // 64)."""
    hf = tiny_hf(n_embd=128, n_head=2, n_layer=3)
    tensors = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(3):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, tmp_path / "gpt2-original.safetensors")
    model = load_gpt2(str(tmp_path / "gpt2-original.safetensors"))
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (3, 2, 128)
    torch.testing.assert_close(logits_of(model, IDX), hf_logits(hf, IDX), atol=1e-4, rtol=0)


def test_reads_f32_f16_bf16_like_the_safetensors_package(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).half(), "c": torch.randn(2, 2, 2).bfloat16(),
               "empty": torch.zeros(0, 4)}
    save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    ours, theirs = lg.read_safetensors(tmp_path / "t.safetensors"), load_file(tmp_path / "t.safetensors")
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


def hf_tensors(hf):
    return {k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}


def test_loading_skips_random_init_and_does_not_import_dynamo(hf_dir):
    # a random fill of a meta tensor imports torch._dynamo (1.3 s of sample.py's start), to_empty symbolic shapes (0.7 s)
    code = ("import sys, torch, load_gpt2; init = torch.nn.init.normal_; load_gpt2.load_gpt2(sys.argv[1]); "
            "print('torch._dynamo' in sys.modules, 'torch.fx.experimental.symbolic_shapes' in sys.modules, "
            "torch.nn.init.normal_ is init)")
    out = subprocess.run([sys.executable, "-c", code, hf_dir], capture_output=True, text=True, cwd=HERE, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


@pytest.mark.parametrize("change, expected", [
    (lambda t: (t.pop("transformer.h.1.mlp.c_fc.bias"), t.update({"transformer.h.0.attn.extra": torch.ones(2)})),
     ["missing: transformer.h.1.mlp.c_fc.bias", "unexpected: transformer.h.0.attn.extra"]),
    (lambda t: t.update({"transformer.ln_f.weight": torch.ones(31)}), ["wrong shape: transformer.ln_f.weight (31,) for (32,)"]),
    (lambda t: t.update({"h.0.ln_1.weight": torch.ones(32)}), ["both '", "'h.0.ln_1.weight'", "'transformer.h.0.ln_1.weight'",
                                                               "would fill transformer.h.0.ln_1.weight"]),
    (lambda t: t.update({"lm_head.weight": torch.zeros(100, 32)}), ["lm_head.weight differs from wte"]),
], ids=["missing-and-unexpected", "wrong-shape", "two-layouts-at-once", "untied-lm_head"])
def test_keys_that_do_not_fit_are_listed(hf_model, tmp_path, change, expected):
    tensors = hf_tensors(hf_model)
    change(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(LoadError) as e:
        load_gpt2(str(tmp_path / "model.safetensors"))
    for text in expected:
        assert text in str(e.value)


@pytest.mark.parametrize("damage, expected", [
    (lambda b: b[: len(b) * 6 // 10], "is truncated or corrupt"),
    (lambda b: (10**9).to_bytes(8, "little") + b[8:], "is truncated or no safetensors file"),
    (lambda b: b[:8] + b"[" + b[9:], "corrupt safetensors header"),
    (lambda b: b"", "is truncated or no safetensors file"),
], ids=["cut-in-the-data", "header-length-past-the-end", "bad-json", "empty"])
def test_truncated_or_corrupt_file_is_refused(hf_dir, tmp_path, damage, expected):
    (tmp_path / "model.safetensors").write_bytes(damage((hf_dir / "model.safetensors").read_bytes()))
    with pytest.raises(LoadError, match=expected):
        load_gpt2(str(tmp_path))


def test_config_json_that_model_cannot_implement_is_refused(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(LoadError, match="activation_function='relu'"):
        load_gpt2(str(tmp_path))


def test_neither_name_nor_path(tmp_path):
    with pytest.raises(LoadError, match="neither a GPT-2 name"):
        load_gpt2(str(tmp_path / "nothing-here"))


# ----------------------------------------------------------------------------------------------------
# Overrides

def test_gqa_mean_pools_key_and_value_heads_within_groups(hf_model, hf_dir):
    model = load_gpt2(str(hf_dir), gqa=True, n_kv_head=2)
    assert model.config.gqa and model.config.n_kv_head == 2
    for layer in range(2):
        w = hf_model.transformer.h[layer].attn.c_attn.weight.T   # Conv1D (in, out) -> (out, in): rows [q | k | v]
        b = hf_model.transformer.h[layer].attn.c_attn.bias
        head = lambda t, part, h: t[part * 32 + 8 * h: part * 32 + 8 * (h + 1)]  # head h of q(0), k(1), v(2)
        # by hand: kv head j is the mean of heads 2j and 2j + 1 (query heads 2j, 2j+1 read kv head j)
        expect_w = torch.cat([w[:32]] + [(head(w, part, 2 * j) + head(w, part, 2 * j + 1)) / 2
                                         for part in (1, 2) for j in range(2)])
        expect_b = torch.cat([b[:32]] + [(head(b, part, 2 * j) + head(b, part, 2 * j + 1)) / 2
                                         for part in (1, 2) for j in range(2)])
        attn = model.transformer.h[layer].attn.c_attn
        assert attn.weight.shape == (64, 32)
        torch.testing.assert_close(attn.weight, expect_w, atol=1e-6, rtol=0)
        torch.testing.assert_close(attn.bias, expect_b, atol=1e-6, rtol=0)
    assert torch.isfinite(logits_of(model, IDX)).all()


def test_gqa_with_as_many_kv_heads_as_heads_is_the_original_model(hf_dir):
    plain, gqa = load_gpt2(str(hf_dir)), load_gpt2(str(hf_dir), gqa=True, n_kv_head=4)
    assert gqa.config.gqa
    for (name, a), (_, b) in zip(plain.state_dict().items(), gqa.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(logits_of(plain, IDX), logits_of(gqa, IDX))


def test_block_size_crops_wpe(hf_model, hf_dir):
    model = load_gpt2(str(hf_dir), block_size=16)
    assert model.config.block_size == 16
    assert torch.equal(model.transformer.wpe.weight, hf_model.transformer.wpe.weight[:16])
    torch.testing.assert_close(logits_of(model, IDX[:, :16]), hf_logits(hf_model, IDX[:, :16]), atol=1e-4, rtol=0)
    with pytest.raises(LoadError, match="block_size=33 exceeds the 32 positions"):
        load_gpt2(str(hf_dir), block_size=33)


def test_swa_is_an_inference_time_window(hf_model, hf_dir):
    model = load_gpt2(str(hf_dir), swa=True, window_size=4)
    assert model.config.swa and model.config.window_size == 4
    windowed, full = logits_of(model, IDX), hf_logits(hf_model, IDX)
    torch.testing.assert_close(windowed[:, :4], full[:, :4], atol=1e-4, rtol=0)  # the window holds all they see
    assert (windowed[:, 4:] - full[:, 4:]).abs().amax(dim=-1).min() > 1e-3   # every later position lost some


def test_dropout_override_reaches_the_model(hf_model, hf_dir):
    model = load_gpt2(str(hf_dir), dropout=0.1)
    assert model.config.dropout == 0.1
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(IDX)[0], model(IDX)[0])  # dropout is active in training
    torch.testing.assert_close(logits_of(model, IDX), hf_logits(hf_model, IDX), atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    (dict(rope=True), "rope=True cannot be applied to GPT-2: it learned absolute position embeddings (wpe)"),
    (dict(window_size=8), "window_size=8 needs swa=True"),
    (dict(n_kv_head=2), "n_kv_head=2 needs gqa=True"),
    (dict(gqa=True, n_kv_head=3), "n_head=4 must be divisible by n_kv_head=3"),
    (dict(swa="yes"), "override swa='yes' must be bool"),
    (dict(n_layer=4), "unknown override 'n_layer'"),
])
def test_bad_overrides_are_refused_with_a_message(hf_dir, overrides, message):
    with pytest.raises(LoadError) as e:
        load_gpt2(str(hf_dir), **overrides)
    assert message in str(e.value)


# ----------------------------------------------------------------------------------------------------
# Command line

def test_cli_writes_a_checkpoint_that_loads_into_gpt(hf_dir, tmp_path, capsys):
    from model import GPT, GPTConfig
    lg.main([str(hf_dir), f"--out={tmp_path / 'out'}", "--gqa=True", "--n_kv_head=2"])
    assert "parameters" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["optimizer"] is None and ckpt["iter_num"] == 0 and ckpt["best_val_loss"] == 1e9
    assert ckpt["config"] == {"init_from": str(hf_dir), "gqa": True, "n_kv_head": 2}
    assert ckpt["tokenizer"] == {"name": "gpt2"}
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])  # strict: exactly GPT's names
    assert torch.equal(logits_of(model, IDX), logits_of(load_gpt2(str(hf_dir), gqa=True, n_kv_head=2), IDX))


def test_cli_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lg.main([str(tmp_path / "missing")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------
# Downloads, against a local server that plays the hub

class Hub(http.server.ThreadingHTTPServer):
    """Serves `files` {url path: bytes} over HTTP on 127.0.0.1, honouring Range; logs every request as
    (method, path, Range); cut {path: n} makes the next GET of path stop after n bytes of its body."""

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files, self.log, self.cut, self.wrong_range = files, [], {}, set()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):

    def do_HEAD(self):
        self.respond(body=False)

    def do_GET(self):
        self.respond(body=True)

    def respond(self, body):
        hub = self.server
        hub.log.append((self.command, self.path, self.headers.get("Range")))
        data = hub.files.get(self.path)
        if data is None:
            return self.send_error(404)
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        if start >= len(data) > 0:
            return self.send_error(416)
        ranged = bool(start)
        if self.path in hub.wrong_range:  # a broken proxy: 206 for a Range request, but the bytes from 0
            start = 0
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("X-Repo-Commit", "0123abcd")
        self.end_headers()
        if body:
            self.wfile.write(data[start:start + hub.cut.pop(self.path, len(data))])  # a cut: fewer bytes than announced

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(hf_dir, monkeypatch, tmp_path):
    """A local hub serving the tiny model as openai-community/gpt2, with HF_ENDPOINT pointing at it and an
    empty hub cache; the pinned size and sha256 of gpt2 are those of the tiny file."""
    weights = (hf_dir / "model.safetensors").read_bytes()
    server = Hub({"/openai-community/gpt2/resolve/main/model.safetensors": weights,
                  "/openai-community/gpt2/resolve/main/config.json": (hf_dir / "config.json").read_bytes()})
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(lg.PINNED, "gpt2", (len(weights), hashlib.sha256(weights).hexdigest()))
    server.weights = weights
    yield server
    server.shutdown()
    server.server_close()


WEIGHTS = "/openai-community/gpt2/resolve/main/model.safetensors"


def test_name_downloads_through_hf_endpoint_with_progress(hub, hf_model, tmp_path, capsys):
    model = load_gpt2("gpt2")
    snapshot = tmp_path / "hub-cache" / "models--openai-community--gpt2" / "snapshots" / "0123abcd"
    assert (snapshot / "model.safetensors").read_bytes() == hub.weights
    assert (snapshot / "config.json").is_file()
    assert (tmp_path / "hub-cache" / "models--openai-community--gpt2" / "refs" / "main").read_text() == "0123abcd"
    assert ("GET", WEIGHTS, None) in hub.log
    assert "downloading model.safetensors: 100.0%" in capsys.readouterr().err
    torch.testing.assert_close(logits_of(model, IDX), hf_logits(hf_model, IDX), atol=1e-4, rtol=0)
    hub.log.clear()
    load_gpt2("gpt2")
    assert hub.log == []  # now from the cache


def test_connection_cut_halfway_resumes_from_the_partial_file(hub, tmp_path):
    data = os.urandom(1 << 20)
    hub.files["/big"] = data
    url, dest, half = hub.url + "/big", str(tmp_path / "dl" / "big"), len(data) // 2
    size, sha256 = len(data), hashlib.sha256(data).hexdigest()
    hub.cut["/big"] = half
    with pytest.raises(DownloadError, match="run again to resume"):
        dl.download(url, dest, size, sha256, attempts=1)
    assert os.path.getsize(dest + ".incomplete") == half and not os.path.exists(dest)
    dl.download(url, dest, size, sha256)  # the next run picks up where the last one stopped
    assert hub.log[-1] == ("GET", "/big", f"bytes={half}-")
    assert open(dest, "rb").read() == data and not os.path.exists(dest + ".incomplete")

    os.remove(dest)
    hub.log.clear()
    hub.cut["/big"] = half
    dl.download(url, dest, size, sha256)  # within one run, a lost connection is resumed at once
    assert hub.log == [("GET", "/big", None), ("GET", "/big", f"bytes={half}-")]
    assert open(dest, "rb").read() == data


def test_sha256_mismatch_is_refused_and_leaves_nothing_in_the_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setitem(lg.PINNED, "gpt2", (len(hub.weights), "0" * 64))
    with pytest.raises(DownloadError, match="sha256 .* where 0{64} was expected.*deleted the partial file"):
        load_gpt2("gpt2")
    assert [f for _, _, files in os.walk(tmp_path / "hub-cache") for f in files] == []


def test_size_announced_by_the_server_is_checked(hub, tmp_path):
    hub.files["/short"] = b"x" * 1000
    with pytest.raises(DownloadError, match="1,000 bytes where 2,000 were expected"):
        dl.download(hub.url + "/short", str(tmp_path / "short"), size=2000)
    assert not os.path.exists(tmp_path / "short.incomplete")


@pytest.mark.parametrize("repo", ["models--openai-community--gpt2", "models--gpt2"])
def test_file_in_the_hub_cache_is_used_without_any_request(hub, hf_model, tmp_path, repo):
    # placed by hand, as the no-network message says (no config.json: shapes give the config; the
    # tiny model's head size is not GPT-2's 64, so compare weights, not logits)
    snapshot = tmp_path / "hub-cache" / repo / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(hub.weights)
    model = load_gpt2("gpt2")
    assert hub.log == []
    assert torch.equal(model.transformer.wte.weight, hf_model.transformer.wte.weight)


def test_cli_verifies_a_pinned_file_found_in_the_cache(hub, tmp_path, capsys):
    lg.main(["gpt2"])
    assert "size and sha256 verified" in capsys.readouterr().out
    path = lg.cached_gpt2("gpt2")
    with open(path, "r+b") as f:  # one flipped byte in the data: the file still loads, but is not GPT-2
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(SystemExit) as e:
        lg.main(["gpt2"])
    assert e.value.code == 1 and "is not OpenAI's gpt2 (sha256" in capsys.readouterr().err


def test_a_206_that_starts_at_another_byte_is_not_appended(hub, tmp_path):
    data = os.urandom(100_000)
    hub.files["/ranged"], dest = data, str(tmp_path / "ranged")
    with open(dest + ".incomplete", "wb") as f:  # an earlier run's partial file
        f.write(data[:1000])
    hub.wrong_range.add("/ranged")
    dl.download(hub.url + "/ranged", dest)  # no size or sha256 given: only the range check can tell
    assert open(dest, "rb").read() == data
    assert hub.log == [("GET", "/ranged", "bytes=1000-"), ("GET", "/ranged", None)]  # refused, then from 0


@pytest.mark.parametrize("bad_file", ["model.safetensors", "config.json"])
def test_an_html_error_page_never_enters_the_cache(hub, tmp_path, monkeypatch, bad_file):
    """A proxy's error page served with 200: without a pinned sha256 only the content can tell."""
    monkeypatch.delitem(lg.PINNED, "gpt2")
    hub.files[f"/openai-community/gpt2/resolve/main/{bad_file}"] = b"<html><body>502 Bad Gateway</body></html>"
    with pytest.raises(DownloadError, match=f"{bad_file} failed its check.*deleted the partial file"):
        load_gpt2("gpt2")
    cached = [f for _, _, files in os.walk(tmp_path / "hub-cache") for f in files]
    assert bad_file not in cached and not any(f.endswith(".incomplete") for f in cached)


def test_a_bad_file_in_the_cache_is_named_for_deletion(hub, tmp_path):
    snapshot = tmp_path / "hub-cache" / "models--openai-community--gpt2" / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"<html>Not Found</html>")
    with pytest.raises(LoadError, match=f"delete {snapshot} to download gpt2 afresh"):
        load_gpt2("gpt2")
    assert hub.log == []


def test_no_network_says_url_cache_path_and_what_to_do(hub, monkeypatch):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as e:
        load_gpt2("gpt2")
    message = str(e.value)
    assert f"http://127.0.0.1:{port}/openai-community/gpt2/resolve/main/model.safetensors" in message
    assert os.path.join("models--openai-community--gpt2", "snapshots", "main", "model.safetensors") in message
    assert "place it at" in message and "\n" not in message


# ----------------------------------------------------------------------------------------------------
# The real GPT-2 124M, where its file is in the hub cache

def test_real_gpt2_greedy_continuation_of_the_dog():
    path = lg.cached_gpt2("gpt2")
    if path is None:
        pytest.skip(f"GPT-2's model.safetensors is not in the hub cache ({dl.hub_cache_dir()}); "
                    f"'python load_gpt2.py gpt2' puts it there")
    model = load_gpt2("gpt2").eval()
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    out = model.generate(torch.tensor([[464, 3290]]), max_new_tokens=18, temperature=0.0)
    # transformers' own integration test for GPT-2 ("The dog")
    assert out[0, 2:].tolist() == [373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262,
                                   13, 198, 198, 464, 3290]



@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]},
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [0.0, 16.0]},
    {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]},
], ids=["negative-dims", "float-offsets", "true-in-shape"])
def test_malformed_safetensors_entries_are_one_clear_error(tmp_path, entry):
    header = json.dumps({"a": entry}).encode()
    (tmp_path / "m.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    with pytest.raises(LoadError, match="tensor 'a' has a corrupt entry"):
        lg.read_safetensors(str(tmp_path / "m.safetensors"))


def test_config_json_that_is_no_object_is_one_clear_error(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text("[1, 2]")
    with pytest.raises(LoadError, match="config.json holds a JSON list, not an object"):
        load_gpt2(str(tmp_path / "hf"))


def test_cli_out_under_a_file_is_one_line(hf_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as e:
        lg.main([str(hf_dir), f"--out={tmp_path / 'a_file' / 'x.pt'}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: cannot write") and err.count("\n") == 1
