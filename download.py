"""
Downloads that survive a lost connection and never leave a bad file in place, and the Hugging Face hub
cache. Used by load_gpt2.py (GPT-2's weights), data/fineweb/prepare.py and hellaswag.py.

download(url, dest): streamed with a progress line into dest + '.incomplete', resumed from that partial
file with an HTTP Range request (after a lost connection, or in a later run), checked for size, sha256 and
content, then renamed into place. The hub cache is huggingface_hub's layout, so files are shared with
transformers: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub, holding
models--<owner>--<name>/snapshots/<commit>/<file> and refs/main.
"""

import glob
import hashlib
import os
import re
import sys
import time

import requests

from configurator import UserError

TIMEOUT = 30     # seconds without a byte before a connection counts as lost
CHUNK = 1 << 16  # bytes per read and write; a lost connection loses at most the chunk in flight


class DownloadError(UserError, OSError):
    """A download that failed; the message says why and what to do."""


def short(error):
    """An exception as one short line (requests nests them deeply)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."


def download(url, dest, size=None, sha256=None, check=None, attempts=3):
    """
    Stream url to dest through dest + '.incomplete', resuming that partial file when it exists (also after a
    connection lost mid-way, up to `attempts` times). Before the rename into place the file must have the size
    (the server's, when not given) and sha256, and check(path), when given, must return None rather than what
    is wrong (say, an HTML error page where JSON was expected); otherwise the partial file is deleted.
    """
    part = dest + ".incomplete"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            size = stream_to(url, part, size)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if attempt == attempts:
                raise DownloadError(f"downloading {url} failed ({short(e)}); {have:,} bytes are kept in {part}: "
                                    f"run again to resume") from None
            print(f"\nconnection lost ({short(e)}); resuming from byte {have:,}", file=sys.stderr)
    problem = check_file(part, size, sha256) or (check(part) if check else None)
    if problem:
        os.remove(part)
        raise DownloadError(f"{url} failed its check ({problem}); deleted the partial file {part}, "
                            f"run again to download it afresh")
    os.replace(part, dest)
    return dest


def stream_to(url, part, size):
    """Append url's bytes to the partial file part (from its current length on); returns the file's full
    size: the one given, else the one the server announces (None if it does not)."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}  # a gzipped body would not match the announced size
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
        if r.status_code == 416:
            return size  # nothing left past `have`: the partial file is whole (check_file decides)
        if r.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code != 206:
            have = 0  # the server ignored the Range: start over
        elif not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            os.remove(part)  # bytes from elsewhere in the file would corrupt it: start over on the next attempt
            raise requests.ConnectionError(f"asked for bytes from {have:,}, the server sent "
                                           f"'{r.headers.get('Content-Range')}'")
        total = size or announced_size(r)
        name, done, shown, start = os.path.basename(part).removesuffix(".incomplete"), have, None, time.time()
        with open(part, "ab" if have else "wb") as f:
            for chunk in r.iter_content(chunk_size=CHUNK):
                f.write(chunk)
                done += len(chunk)
                step = 100 * done // total if total else done >> 20  # redraw once per percent (or MB)
                if step != shown:
                    shown = step
                    show_progress(name, done, total, (done - have) / max(time.time() - start, 1e-6))
        print(file=sys.stderr)  # end the progress line
    return total


def announced_size(r):
    content_range = r.headers.get("Content-Range", "")  # "bytes 100-199/200" answers a Range request
    if r.status_code == 206 and content_range.rpartition("/")[2].isdigit():
        return int(content_range.rpartition("/")[2])
    if r.status_code == 200 and r.headers.get("Content-Length", "").isdigit():
        return int(r.headers["Content-Length"])
    return None


def show_progress(name, done, total, speed):
    percent = f"{100 * done / total:5.1f}% " if total else ""
    size = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB" if total else f"{done / 1e6:,.1f} MB"
    print(f"\rdownloading {name}: {percent}{size} at {speed / 1e6:.1f} MB/s", end="", file=sys.stderr, flush=True)


def check_file(path, size, sha256):
    """What is wrong with the downloaded file, or None."""
    have = os.path.getsize(path)
    if size is not None and have != size:
        return f"{have:,} bytes where {size:,} were expected"
    if sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"sha256 {digest.hexdigest()} where {sha256} was expected"
    return None


# ----------------------------------------------------------------------------------------------------
# The Hugging Face hub: its cache and what it announces about a file

def hub_cache_dir():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.environ.get("HF_HOME") or os.path.join(cache, "huggingface"), "hub")


def repo_dir(repo_id):
    return os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))


def find_cached(repo_ids, filename):
    """filename from a cached snapshot of the first of repo_ids that has it (refs/main's snapshot first), or None."""
    for repo in map(repo_dir, repo_ids):
        snapshots = sorted(glob.glob(os.path.join(repo, "snapshots", "*")))
        try:
            with open(os.path.join(repo, "refs", "main")) as f:
                main = os.path.join(repo, "snapshots", f.read().strip())
            snapshots.sort(key=lambda s: s != main)
        except OSError:
            pass
        for snapshot in snapshots:
            if os.path.isfile(os.path.join(snapshot, filename)):
                return os.path.join(snapshot, filename)
    return None


def remote_info(url):
    """What the hub announces about url, to verify its download: (commit, size, sha256), the last two maybe None.
    The hub answers for a file in LFS with a redirect that carries them as X-Linked-Size and X-Linked-Etag."""
    r = requests.head(url, allow_redirects=False, timeout=TIMEOUT, headers={"Accept-Encoding": "identity"})
    if r.status_code >= 400:
        raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
    size = r.headers.get("X-Linked-Size") or (r.headers.get("Content-Length") if r.status_code == 200 else None)
    etag = (r.headers.get("X-Linked-Etag") or r.headers.get("ETag") or "").removeprefix("W/").strip('"')
    commit = r.headers.get("X-Repo-Commit", "")
    return (commit if re.fullmatch(r"[0-9A-Za-z._-]+", commit) else "main", int(size) if size else None,
            etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)  # a git sha1 etag (40 hex) is no sha256
