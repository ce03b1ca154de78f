"""
Tiny Shakespeare at the character level: train.bin and val.bin (uint16 token ids, 90% / 10% of the text)
and meta.json, whose tokenizer.itos lists the characters (id i is itos[i]).

    python data/shakespeare_char/prepare.py                   # downloads input.txt (1.1 MB)
    python data/shakespeare_char/prepare.py --input PATH      # a local copy
"""

import argparse
import json
import os
import sys

import numpy as np
import requests

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

    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    print(f"vocabulary: {len(itos)} characters: {''.join(itos)!r}")
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    for split, part in (('train', ids[:n]), ('val', ids[n:])):
        part.tofile(os.path.join(args.out_dir, f'{split}.bin'))
        print(f"{split}.bin: {len(part):,} tokens")
    meta = {'vocab_size': len(itos), 'dtype': 'uint16', 'tokenizer': {'name': 'char', 'itos': itos}}
    with open(os.path.join(args.out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f)


if __name__ == '__main__':
    main()
