"""Shared test helpers. Tests need no network and no GPU."""

import hashlib
import os
import tempfile

import pytest
import torch

GPT2_BPE_URLS = [
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
]


def gpt2_bpe_cached():
    """True when tiktoken's cache holds GPT-2's BPE files, so get_encoding('gpt2') needs no network."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") \
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return all(os.path.isfile(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())) for url in GPT2_BPE_URLS)


@pytest.fixture
def gpt2_bpe():
    """Skip (with the reason) when GPT-2's BPE files are not in tiktoken's cache; in CI that is a failure."""
    if not gpt2_bpe_cached():
        reason = ("GPT-2's BPE files are not in tiktoken's cache: fill it once with network, "
                  "python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    import tiktoken
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tests' models are tiny: they gain nothing from threads, and on a busy machine spin-waits cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
