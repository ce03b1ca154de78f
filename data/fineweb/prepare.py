"""
FineWeb-Edu's sample-10BT subset (about 10B GPT-2 tokens, the set build-nanogpt and llm.c use to reproduce
GPT-2 124M) in GPT-2's BPE tokens: val.bin holds the first --val_tokens tokens (whole documents), train.bin
the rest, both uint16; meta.json describes them. Every document is preceded by <|endoftext|>, as in GPT-2.

    python data/fineweb/prepare.py                     # downloads ~27 GB of parquet files, writes ~20 GB of .bin
    python data/fineweb/prepare.py --input PATH        # a local .parquet or .jsonl file, or a folder of them

The parquet files are listed through the Hugging Face Hub API and downloaded one at a time into
data/fineweb/parquet/ with the repository's download.py (an interrupted download resumes, sizes are checked). Rows are read in batches (parquet needs
pyarrow: pip install pyarrow; .jsonl, one {"text": ...} per line, needs nothing), tokenized by worker
processes, and appended to the .bin files as they come back, in order: memory stays flat however big the set.
"""

import argparse
import collections
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import requests
import tiktoken

REPO = 'HuggingFaceFW/fineweb-edu'
SUBSET = 'sample/10BT'
LIST_URL = f'https://huggingface.co/api/datasets/{REPO}/tree/main/{SUBSET}'
FILE_URL = f'https://huggingface.co/datasets/{REPO}/resolve/main/{{path}}'
HERE = os.path.dirname(os.path.abspath(__file__))

sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root, for its shared modules
from configurator import exit_with_error as fail  # noqa: E402
from download import DownloadError, download  # noqa: E402

try:
    enc = tiktoken.get_encoding('gpt2')  # module level: worker processes get it too
except Exception as e:  # tiktoken fetches GPT-2's two BPE files on first use
    fail(f"GPT-2's BPE files could not be loaded ({type(e).__name__}): tiktoken downloads them once from "
         f"openaipublic.blob.core.windows.net (run this once with network), or reads them from $TIKTOKEN_CACHE_DIR")


# -----------------------------------------------------------------------------
# where the documents come from

def list_remote_files():
    """List the subset's parquet files on the hub: (path in the repository, size in bytes) of each."""
    try:
        response = requests.get(LIST_URL, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        fail(f"could not list {LIST_URL} ({e}); pass --input PATH with a local copy")
    items = [item for item in response.json() if item['type'] == 'file' and item['path'].endswith('.parquet')]
    return sorted((item['path'], item.get('lfs', {}).get('size', item['size'])) for item in items)


def local_files(path):
    """The .parquet and .jsonl files of --input: the file itself, or those in the folder, sorted."""
    if not os.path.exists(path):
        fail(f"--input '{path}' not found")
    names = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in sorted(os.listdir(path))]
    files = [n for n in names if n.endswith(('.parquet', '.jsonl'))]
    if not files:
        fail(f"--input '{path}' holds no .parquet or .jsonl file")
    return files


def read_batches(path, rows):
    """Lists of up to `rows` document texts from a .parquet or .jsonl file, read as they are needed."""
    if path.endswith('.jsonl'):
        with open(path, encoding='utf-8') as f:
            batch = []
            for line in f:
                if line.strip():
                    batch.append(json.loads(line)['text'])
                if len(batch) == rows:
                    yield batch
                    batch = []
            if batch:
                yield batch
    else:
        import pyarrow.parquet as pq
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=['text']):
            yield record_batch.column(0).to_pylist()


# -----------------------------------------------------------------------------
# tokenizing and writing

def tokenize(texts):
    """In a worker: the documents' tokens, each document after <|endoftext|>, and each document's length."""
    docs = [[enc.eot_token] + enc.encode_ordinary(text) for text in texts]
    return np.array([t for doc in docs for t in doc], dtype=np.uint16), np.array([len(d) for d in docs])


def tokenized(batches, pool, in_flight):
    """tokenize() of each batch, in order, with at most `in_flight` batches at the workers (pool.map would
    read the whole input ahead into memory)."""
    pending = collections.deque()
    try:
        for texts in batches:
            pending.append(pool.submit(tokenize, texts))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:  # killed: by the kernel's OOM killer, most often
        fail("a tokenizer worker process died before it answered; if memory ran out, lower --num_proc or --rows")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', help='a local .parquet or .jsonl file, or a folder of them (default: download)')
    parser.add_argument('--out_dir', default=HERE, help='where train.bin, val.bin and meta.json go (default: here)')
    parser.add_argument('--val_tokens', type=int, default=100_000_000,
                        help='tokens for val.bin, in whole documents from the start (default: 100M, as build-nanogpt)')
    parser.add_argument('--num_proc', type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help='tokenizer worker processes (default: half the CPUs)')
    parser.add_argument('--rows', type=int, default=1024, help='documents per worker task')
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    if args.input:
        sources = [(path, None) for path in local_files(args.input)]
    else:
        download_dir = os.path.join(args.out_dir, 'parquet')
        os.makedirs(download_dir, exist_ok=True)
        sources = [(os.path.join(download_dir, os.path.basename(p)), (FILE_URL.format(path=p), size))
                   for p, size in list_remote_files()]
        print(f"{REPO} {SUBSET}: {len(sources)} parquet files, {sum(s[1][1] for s in sources) / 1e9:.1f} GB")

    if any(path.endswith('.parquet') for path, _ in sources):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            fail("reading parquet files needs pyarrow: pip install pyarrow")

    def documents():  # each file is downloaded (resumed, size-checked) just before it is read
        for path, remote in sources:
            if remote and not os.path.isfile(path):
                try:
                    download(remote[0], path, size=remote[1])
                except DownloadError as e:
                    fail(f"{e}; or pass --input PATH with a local copy")
            yield from read_batches(path, args.rows)

    # written under temporary names: an interrupted run leaves no .bin that looks complete
    paths = {split: os.path.join(args.out_dir, f'{split}.bin') for split in ('val', 'train')}
    counts = {'val': 0, 'train': 0}
    n_docs, t0, shown = 0, time.time(), 0.0
    # workers are spawned, not forked: numpy's BLAS threads are running here, and a child forked from a
    # process with threads can deadlock (Python 3.14 stopped forking by default); a worker that dies is
    # an error here, where multiprocessing.Pool would wait for its result for ever
    with open(paths['val'] + '.tmp', 'wb') as val_file, open(paths['train'] + '.tmp', 'wb') as train_file, \
            ProcessPoolExecutor(args.num_proc, mp_context=mp.get_context('spawn')) as pool:
        for ids, lengths in tokenized(documents(), pool, in_flight=4 * args.num_proc):
            cut = 0  # documents go to val until it holds val_tokens, then to train
            if counts['val'] < args.val_tokens:
                ends = np.cumsum(lengths)
                n_val_docs = min(int(np.searchsorted(ends, args.val_tokens - counts['val'])) + 1, len(ends))
                cut = int(ends[n_val_docs - 1])
            val_file.write(ids[:cut].tobytes())
            train_file.write(ids[cut:].tobytes())
            counts['val'] += cut
            counts['train'] += len(ids) - cut
            n_docs += len(lengths)
            if time.time() - shown > 1:
                shown = time.time()
                tokens = counts['val'] + counts['train']
                print(f"\rtokenized {n_docs:,} documents, {tokens:,} tokens ({tokens / (shown - t0):,.0f} tokens/s)",
                      end='', flush=True)
    print(('\n' if shown else '') + f"tokenized {n_docs:,} documents: "
          f"val.bin {counts['val']:,} tokens, train.bin {counts['train']:,} tokens")
    if counts['train'] == 0:
        fail(f"all {counts['val']:,} tokens went to val.bin: lower --val_tokens")
    for split, path in paths.items():
        os.replace(path + '.tmp', path)
    meta = {'vocab_size': enc.n_vocab, 'dtype': 'uint16', 'tokenizer': {'name': 'gpt2'}}
    with open(os.path.join(args.out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f)


if __name__ == '__main__':
    main()
