"""Each data/*/prepare.py on a tiny local input (--input), as a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def prepare(dataset, *args):
    result = subprocess.run([sys.executable, os.path.join(HERE, 'data', dataset, 'prepare.py'), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def read_bins(out_dir):
    with open(os.path.join(out_dir, 'meta.json')) as f:
        meta = json.load(f)
    splits = {s: np.fromfile(os.path.join(out_dir, f'{s}.bin'), dtype=meta['dtype']) for s in ('train', 'val')}
    return meta, splits


def test_shakespeare_char(tmp_path):
    (tmp_path / 'input.txt').write_text(TEXT)
    prepare('shakespeare_char', '--input', str(tmp_path / 'input.txt'), '--out_dir', str(tmp_path / 'out'))
    meta, splits = read_bins(tmp_path / 'out')
    itos = meta['tokenizer']['itos']
    assert meta['tokenizer']['name'] == 'char' and meta['vocab_size'] == len(itos) == len(set(TEXT))
    assert itos == sorted(itos) and meta['dtype'] == 'uint16'
    decoded = ''.join(itos[i] for i in np.concatenate([splits['train'], splits['val']]))
    assert decoded == TEXT
    assert len(splits['train']) == int(0.9 * len(TEXT))


def test_shakespeare_char_missing_input_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, 'data', 'shakespeare_char', 'prepare.py'),
                             '--input', str(tmp_path / 'nothing.txt'), '--out_dir', str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == f"error: --input '{tmp_path}/nothing.txt' not found"


def test_shakespeare_bpe(tmp_path, gpt2_bpe):
    (tmp_path / 'input.txt').write_text(TEXT)
    prepare('shakespeare', '--input', str(tmp_path / 'input.txt'), '--out_dir', str(tmp_path / 'out'))
    meta, splits = read_bins(tmp_path / 'out')
    assert meta == {'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': {'name': 'gpt2'}}
    assert gpt2_bpe.decode(splits['train'].tolist()) + gpt2_bpe.decode(splits['val'].tolist()) == TEXT
    assert len(splits['val']) > 0


def test_fineweb_from_a_local_jsonl(tmp_path, gpt2_bpe):
    docs = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 7 + 1) for i in range(300)]
    with open(tmp_path / 'part.jsonl', 'w') as f:
        for text in docs:
            f.write(json.dumps({'text': text, 'id': 'x'}) + '\n')
    out = prepare('fineweb', '--input', str(tmp_path), '--out_dir', str(tmp_path / 'out'), '--val_tokens=500',
                  '--num_proc=2', '--rows=16')
    assert 'tokenized 300 documents' in out
    meta, splits = read_bins(tmp_path / 'out')
    assert meta == {'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': {'name': 'gpt2'}}
    eot = gpt2_bpe.eot_token
    val_docs = gpt2_bpe.decode(splits['val'].tolist()).split('<|endoftext|>')[1:]
    train_docs = gpt2_bpe.decode(splits['train'].tolist()).split('<|endoftext|>')[1:]
    assert splits['val'][0] == eot and splits['train'][0] == eot  # every document starts with <|endoftext|>
    assert val_docs + train_docs == docs                          # in order, whole documents, nothing lost
    assert 500 <= len(splits['val']) < 500 + 200                  # val stops at the document passing 500 tokens
    assert not any(name.endswith('.tmp') for name in os.listdir(tmp_path / 'out'))


def test_shakespeare_bpe_without_network_is_one_line(tmp_path):
    (tmp_path / 'input.txt').write_text(TEXT)
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path / 'empty'), HTTPS_PROXY='http://127.0.0.1:9',
               https_proxy='http://127.0.0.1:9')  # nothing listens there: as good as no network
    result = subprocess.run([sys.executable, os.path.join(HERE, 'data', 'shakespeare', 'prepare.py'), '--input',
                             str(tmp_path / 'input.txt'), '--out_dir', str(tmp_path / 'out')],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error: GPT-2's BPE files could not be loaded")
    assert result.stderr.count('\n') == 1, result.stderr


WORKER_DIES = """
import os, sys
sys.path.insert(0, sys.argv[1])
import prepare

class DiesInTheWorker:  # unpickled in a tokenizer worker, it ends that process at once, as the OOM killer would
    def __reduce__(self):
        return (os._exit, (1,))

prepare.read_batches = lambda path, rows: iter([['a document'], [DiesInTheWorker()], ['another one']])
sys.argv = ['prepare.py', *sys.argv[2:]]
prepare.main()
"""


def test_fineweb_worker_that_dies_is_one_line_not_a_hang(tmp_path, gpt2_bpe):
    (tmp_path / 'part.jsonl').write_text(json.dumps({'text': 'unused'}) + '\n')
    result = subprocess.run([sys.executable, '-c', WORKER_DIES, os.path.join(HERE, 'data', 'fineweb'), '--input',
                             str(tmp_path), '--out_dir', str(tmp_path / 'out'), '--num_proc=2'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("error: a tokenizer worker process died"), result.stderr
    assert result.stderr.count('\n') == 1, result.stderr
    assert not os.path.exists(tmp_path / 'out' / 'train.bin') and not os.path.exists(tmp_path / 'out' / 'val.bin')
