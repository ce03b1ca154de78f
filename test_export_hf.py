"""
Tests of export_hf.py: every switch combination exported, opened with transformers' AutoModelForCausalLM, the
same logits and greedy tokens; read back by load_gpt2 bit-exact; the tokenizer files; the command line.
"""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, Starcoder2ForCausalLM

import export_hf
from load_gpt2 import LoadError, load_gpt2, read_safetensors
from model import GPT, GPTConfig

ITOS = list("\n abcdefghijklmnopqrstuvwxyz")
CASES = {  # name: (GPTConfig switches, transformers class)
    "gpt2": (dict(), GPT2LMHeadModel),
    "gpt2-nobias": (dict(bias=False), GPT2LMHeadModel),
    "gqa": (dict(gqa=True, n_kv_head=2), GPT2LMHeadModel),
    "gqa-nobias": (dict(gqa=True, n_kv_head=1, bias=False), GPT2LMHeadModel),
    "rope": (dict(rope=True, rope_theta=500.0), Starcoder2ForCausalLM),
    "rope-gqa": (dict(rope=True, gqa=True, n_kv_head=2), Starcoder2ForCausalLM),
    "rope-swa": (dict(rope=True, swa=True, window_size=7), Starcoder2ForCausalLM),
    "rope-gqa-swa-nobias": (dict(rope=True, gqa=True, n_kv_head=1, swa=True, window_size=5, bias=False),
                            Starcoder2ForCausalLM),
}
# The Hugging Face names of every tensor llama.cpp's loader requires, by architecture, as its converter maps them
# (llama.cpp as vendored in llama-cpp-python 0.3.36): required tensors from src/models/starcoder2.cpp and
# src/models/gpt2.cpp, load_arch_tensors (every bias there has flag 0, "required"; q/k/v biases are optional
# there but use_bias=True makes transformers require them); the names from gguf-py/gguf/tensor_mapping.py
# (model.embed_tokens -> token_embd, model.norm -> output_norm, input_layernorm -> attn_norm, q/k/v_proj ->
# attn_q/k/v, o_proj -> attn_output, post_attention_layernorm -> ffn_norm, mlp.c_fc -> ffn_up, mlp.c_proj ->
# ffn_down; transformer.wte/wpe -> token_embd/position_embd, ln_f -> output_norm, ln_1 -> attn_norm, c_attn ->
# attn_qkv, attn.c_proj -> attn_output, ln_2 -> ffn_norm). {bid} is a layer. Nothing else may be in the file:
# the converter refuses a name it cannot map.
LLAMA_CPP_TENSORS = {
    "Starcoder2ForCausalLM": (["model.embed_tokens.weight", "model.norm.weight", "model.norm.bias"], [
        f"model.layers.{{bid}}.{m}.{leaf}" for leaf in ("weight", "bias") for m in (
            "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "post_attention_layernorm", "mlp.c_fc", "mlp.c_proj")]),
    "GPT2LMHeadModel": (["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                         "transformer.ln_f.bias"], [
        f"transformer.h.{{bid}}.{m}.{leaf}" for leaf in ("weight", "bias") for m in (
            "ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]),
}
IDX = torch.randint(0, len(ITOS), (2, 24), generator=torch.Generator().manual_seed(1))


def tiny(switches, seed=0):
    """A random GPT whose weights are spread to std 0.3, so that a wrong detail shows above the tolerance."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=24, vocab_size=len(ITOS), n_layer=2, n_head=4, n_embd=32, **switches)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module", params=CASES, ids=list(CASES))
def exported(request, tmp_path_factory):
    switches, cls = CASES[request.param]
    model = tiny(switches)
    hf_dir = tmp_path_factory.mktemp(request.param)
    architecture, files = export_hf.export(model, {"name": "char", "itos": ITOS}, str(hf_dir))
    assert architecture == cls.__name__ and "char_vocab.json" in files
    return model, hf_dir, cls


def test_transformers_opens_it_with_the_same_logits_and_greedy_tokens(exported):
    model, hf_dir, cls = exported
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(hf) is cls
    with torch.no_grad():  # 24 positions: past every window
        torch.testing.assert_close(hf(IDX).logits, model(IDX)[0], atol=1e-4, rtol=0)
        prompt = torch.tensor([[0, 5, 0, 9]])  # token 0 in the prompt: transformers must not take it for padding
        ours = model.generate(prompt, max_new_tokens=20, temperature=0)
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                             pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_load_gpt2_reads_it_back_bit_exact(exported):
    model, hf_dir, _ = exported
    back = load_gpt2(str(hf_dir)).eval()
    original_sd, config = model.state_dict(), model.config
    if config.gqa and not config.rope:  # GPT-2 has no GQA: it comes back as the multi-head attention it was written as
        original_sd, config = export_hf.expand_kv_heads(original_sd, config), dataclasses.replace(
            config, gqa=False, n_kv_head=GPTConfig.n_kv_head)
    assert back.config == config
    assert back.state_dict().keys() == original_sd.keys()
    for k, v in original_sd.items():
        assert torch.equal(back.state_dict()[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(back(IDX)[0], model(IDX)[0], atol=1e-6, rtol=0)


def test_it_holds_every_tensor_llama_cpp_requires(exported):
    """llama.cpp's Starcoder2 requires every bias: a bias=False model is written with use_bias=True and zeros."""
    model, hf_dir, cls = exported
    top, per_layer = LLAMA_CPP_TENSORS[cls.__name__]
    tensors = read_safetensors(str(hf_dir / "model.safetensors"))
    assert tensors.keys() == set(top) | {n.format(bid=i) for n in per_layer for i in range(model.config.n_layer)}
    if cls is Starcoder2ForCausalLM:
        assert json.loads((hf_dir / "config.json").read_text())["use_bias"] is True
    if not model.config.bias:
        assert not any(t.any() for name, t in tensors.items() if name.endswith(".bias"))


def test_the_file_is_plain_safetensors(exported):
    _, hf_dir, _ = exported
    theirs = load_file(hf_dir / "model.safetensors")  # the safetensors package reads what our writer wrote
    ours = read_safetensors(str(hf_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((hf_dir / "char_vocab.json").read_text()) == {"name": "char", "itos": ITOS}


def test_swa_without_rope_is_one_clear_error(tmp_path):
    with pytest.raises(export_hf.ExportError, match="swa=True without rope has no transformers architecture"):
        export_hf.export(tiny(dict(swa=True, window_size=4)), {"name": "char", "itos": ITOS}, str(tmp_path))
    assert not (tmp_path / "model.safetensors").exists()


def test_starcoder2_that_gpt_cannot_compute_is_refused(tmp_path):
    export_hf.export(tiny(dict(rope=True)), {"name": "char", "itos": ITOS}, str(tmp_path))
    hf_config = json.loads((tmp_path / "config.json").read_text())
    hf_config.update(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, norm_epsilon=1e-6)
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(LoadError, match="norm_epsilon=1e-06.*rope_type='linear'"):
        load_gpt2(str(tmp_path))


def test_gpt2_tokenizer_files_load_with_auto_tokenizer(gpt2_bpe, tmp_path, monkeypatch):
    from transformers import AutoTokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16))
    export_hf.export(model, {"name": "gpt2"}, str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello, I'm a language model,<|endoftext|> héllo\n\n  日本"
    assert tokenizer(text)["input_ids"] == gpt2_bpe.encode(text, allowed_special="all")
    assert tokenizer.eos_token_id == 50256 == json.loads((tmp_path / "config.json").read_text())["eos_token_id"]


def test_command_line_exports_a_checkpoint(tmp_path, capsys):
    model = tiny(dict(rope=True, gqa=True, n_kv_head=2))
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                "tokenizer": {"name": "char", "itos": ITOS}}, tmp_path / "ckpt.pt")
    export_hf.main([f"--out_dir={tmp_path}"])
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_key_value_heads"] == 2
    torch.save({"model": tiny(dict(swa=True)).state_dict(), "model_args": dataclasses.asdict(tiny(dict(swa=True)).config),
                "tokenizer": {"name": "char", "itos": ITOS}}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit) as e:
        export_hf.main([f"--out_dir={tmp_path}", f"--hf_dir={tmp_path / 'swa'}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: swa=True without rope") and err.count("\n") == 1


def test_command_line_says_llama_cpp_ignores_the_window(tmp_path, capsys):
    for switches in (dict(rope=True), dict(rope=True, swa=True, window_size=6)):
        model = tiny(switches)
        torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config),
                    "tokenizer": {"name": "char", "itos": ITOS}}, tmp_path / "ckpt.pt")
        export_hf.main([f"--out_dir={tmp_path}"])
        notes = [line for line in capsys.readouterr().out.splitlines() if "llama.cpp" in line]
        assert notes == ([] if not model.config.swa else [
            "note: llama.cpp's Starcoder2 ignores sliding_window (it attends over the whole context), so there this "
            "model computes something else past window_size=6 tokens"])


@pytest.mark.parametrize("use_bias", [True, False])
def test_load_gpt2_reads_a_starcoder2_saved_by_transformers(tmp_path, use_bias):
    from transformers import Starcoder2Config
    torch.manual_seed(0)
    hf = Starcoder2ForCausalLM(Starcoder2Config(
        vocab_size=len(ITOS), hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=24, sliding_window=6, use_bias=use_bias,
        rope_parameters={"rope_type": "default", "rope_theta": 300.0})).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)  # LayerNorm biases too: with use_bias=False the Linears get zero ones here
    hf.save_pretrained(tmp_path)
    model = load_gpt2(str(tmp_path)).eval()
    c = model.config
    assert (c.rope, c.rope_theta, c.gqa, c.n_kv_head, c.swa, c.window_size, c.bias) == (True, 300.0, True, 2, True, 6, True)
    with torch.no_grad():
        torch.testing.assert_close(model(IDX)[0], hf(IDX).logits, atol=1e-4, rtol=0)


def test_gpt2_tokenizer_files_that_cannot_be_had_are_one_clear_error(tmp_path, monkeypatch):
    import tiktoken.load

    def offline(url, expected_hash=None):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken.load, "read_file_cached", offline)
    with pytest.raises(export_hf.ExportError, match=r"encoder.json could not be read \(no network\).*TIKTOKEN_CACHE_DIR"):
        export_hf.export(tiny({}), {"name": "gpt2"}, str(tmp_path))
    assert not (tmp_path / "model.safetensors").exists()
