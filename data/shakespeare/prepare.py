"""
Tiny Shakespeare in GPT-2's BPE tokens, for fine-tuning GPT-2: train.bin and val.bin (uint16 token ids, the
first 90% / last 10% of the text) and meta.json.

    python data/shakespeare/prepare.py                   # downloads input.txt (1.1 MB)
    python data/shakespeare/prepare.py --input PATH      # a local copy
"""

import argparse
import json
import os
import sys

import numpy as np
import requests
import tiktoken

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))


def read_text(path, url):
    """The text of path, downloaded from url first when it is not there."""
    if not os.path.isfile(path):
        print(f"downloading {url}")
        try:
            response = requests.get(url, timeout=60)
            response.raise_for_status()
        except requests.RequestException as e:
            sys.exit(f"error: could not download {url} ({e}); pass --input PATH with a local copy")
        with open(path, 'w', encoding='utf-8') as f:
            f.write(response.text)
    with open(path, encoding='utf-8') as f:
        return f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', help='a local copy of the text (default: download it to input.txt here)')
    parser.add_argument('--out_dir', default=HERE, help='where train.bin, val.bin and meta.json go (default: here)')
    args = parser.parse_args()
    if args.input and not os.path.isfile(args.input):
        sys.exit(f"error: --input '{args.input}' not found")
    os.makedirs(args.out_dir, exist_ok=True)
    text = read_text(args.input or os.path.join(args.out_dir, 'input.txt'), URL)
    print(f"{len(text):,} characters")

    # split the text, not the tokens, so no token straddles the boundary
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken fetches GPT-2's two BPE files on first use
        sys.exit(f"error: GPT-2's BPE files could not be loaded ({type(e).__name__}): tiktoken downloads them once "
                 f"from openaipublic.blob.core.windows.net (run this once with network), or reads them from "
                 f"$TIKTOKEN_CACHE_DIR")
    n = int(0.9 * len(text))
    for split, part in (('train', text[:n]), ('val', text[n:])):
        ids = np.array(enc.encode_ordinary(part), dtype=np.uint16)  # GPT-2's 50257 ids fit in 16 bits
        ids.tofile(os.path.join(args.out_dir, f'{split}.bin'))
        print(f"{split}.bin: {len(ids):,} tokens")
    meta = {'vocab_size': enc.n_vocab, 'dtype': 'uint16', 'tokenizer': {'name': 'gpt2'}}
    with open(os.path.join(args.out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f)


if __name__ == '__main__':
    main()
