#!/usr/bin/env python3
"""Sites 1, 2, 5 and 10 versions behind, and a first sync, on real consecutive releases.

Issue 20 ("an honest harness"): the side-by-side tables measure a site one version behind,
which is what the default delta (`publish --deltas 1`) covers. This script downloads 11
consecutive botocore sdists from PyPI (1.35.50 to 1.35.60: about 13,000 files each, real
re-stamped mtimes), publishes them in order into a directory store, and keeps a mirror
synced at versions 10, 9, 6 and 1 of them (1, 2, 5 and 10 behind the last) and an empty
one. Once the last is published, each mirror syncs over `pulpdist serve` (loopback) and
its bytes and requests are read from `sync --json`; beside it, `rsync -az` (the protocol
over a pipe, so its compression counts; `Total bytes received`) brings a copy of the same
version to the last one. Run once with the default `--deltas 1` and once with
`--deltas 10` (a delta from each of the last 10 trees; the older nine at
`--old-delta-level`, 9 by default).

    benchmarks/behind.py [--work DIR] [--pulpdist BIN]

Downloads are kept in WORK/downloads. Prints a Markdown table.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSIONS = [f"1.35.{n}" for n in range(50, 61)]
BEHIND = [1, 2, 5, 10]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def release(dl: Path, v: str) -> Path:
    """botocore `v`, unpacked with the tarball's own mtimes (downloaded once)."""
    out = dl / v
    if out.exists():
        return out
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"botocore=={v}", "-d", str(dl)], stderr=subprocess.DEVNULL)
    tmp = dl / f"{v}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["tar", "xzf", str(dl / f"botocore-{v}.tar.gz"), "--strip-components=1", "-C",
         str(tmp)])
    tmp.rename(out)
    return out


def bring(src: Path, dst: Path):
    """dst becomes a copy of src (mtimes kept: as a release's tarball gives them)."""
    run(["rsync", "-a", "--delete", f"{src}/", f"{dst}/"])


def rsync_bytes(old: Path, new: Path, work: Path) -> int:
    """Bytes `rsync -az` receives bringing a copy of `old` to `new` over a pipe."""
    copy = work / "rsync-copy"
    shutil.rmtree(copy, ignore_errors=True)
    bring(old, copy)
    shell = work / "pipe-shell"
    shell.write_text('#!/bin/sh\n# rsync remote shell: drop the host, run the command\n'
                     'shift\nexec "$@"\n')
    shell.chmod(0o755)
    out = run(["rsync", "-az", "--delete", "--stats", "-e", str(shell),
               f"localhost:{new}/", f"{copy}/"])
    m = re.search(r"Total bytes received: ([\d,]+)", out)
    if not m:
        raise SystemExit(f"no byte count in rsync's output:\n{out}")
    shutil.rmtree(copy)
    return int(m.group(1).replace(",", ""))


def pulpdist_round(pd: str, dl: Path, work: Path, deltas: int):
    """Publishes every version with `--deltas N`; returns {behind: sync report}, the
    store's bytes and the last publish's wall seconds."""
    w = work / f"deltas-{deltas}"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    run([pd, "keygen", str(w / "key")], stderr=subprocess.DEVNULL)
    up = w / "up"
    last = len(VERSIONS) - 1
    mirrors = {k: w / f"mirror-{k}" for k in BEHIND + [None]}

    def sync(k, store):
        r = run([pd, "sync", "--store", store, "--tree", "botocore", "--trust",
                 str(w / "key.pub"), "--state", str(w / f"state-{k}"), "--json",
                 str(mirrors[k])], stderr=subprocess.DEVNULL)
        return json.loads(r)

    for i, v in enumerate(VERSIONS):
        bring(release(dl, v), up)
        started = time.monotonic()
        run([pd, "publish", "--store", str(w / "store"), "--tree", "botocore", "--key",
             str(w / "key"), "--state", str(w / "pub-state"), "--deltas", str(deltas),
             str(up)], stderr=subprocess.DEVNULL)
        publish_s = time.monotonic() - started
        for k in BEHIND:
            if i == last - k:
                sync(k, str(w / "store"))
    serve = subprocess.Popen([pd, "serve", "--store", str(w / "store"), "--listen",
                              "127.0.0.1:0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in serve.stdout:
            m = re.search(r"http://127\.0\.0\.1:\d+", line)
            if m:
                url = m.group(0)
                break
        if not url:
            raise SystemExit("pulpdist serve printed no address")
        reports = {k: sync(k, url) for k in BEHIND + [None]}
    finally:
        serve.terminate()
        serve.wait()
    final = release(dl, VERSIONS[last])
    for k in BEHIND + [None]:
        same = subprocess.run(["diff", "-r", "-q", str(final), str(mirrors[k])],
                              stdout=subprocess.DEVNULL).returncode == 0
        if not same:
            raise SystemExit(f"mirror {k} behind differs from {VERSIONS[last]}")
    store_bytes = sum(p.stat().st_size for p in (w / "store" / "packs").iterdir())
    shutil.rmtree(w)
    return reports, store_bytes, publish_s


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pulpdist-behind"))
    a.add_argument("--pulpdist", default=os.environ.get("PULPDIST", "pulpdist"))
    args = a.parse_args()
    work = Path(args.work)
    dl = work / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    last = len(VERSIONS) - 1
    rounds = {d: pulpdist_round(args.pulpdist, dl, work, d) for d in (1, 10)}
    rs = {k: rsync_bytes(release(dl, VERSIONS[last - k]), release(dl, VERSIONS[last]), work)
          for k in BEHIND}
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    rs[None] = rsync_bytes(empty, release(dl, VERSIONS[last]), work)
    for d, (_, store, secs) in rounds.items():
        print(f"--deltas {d}: store {store:,} B after {len(VERSIONS)} versions, "
              f"last publish {secs:.2f} s wall")
    print(f"\nbotocore {VERSIONS[0]} to {VERSIONS[last]}\n")
    print("| site | rsync -az bytes | PulpDist --deltas 1: bytes (requests) | ratio "
          "| --deltas 10: bytes (requests) | ratio |")
    print("|---|---|---|---|---|---|")
    for k in BEHIND + [None]:
        name = "first sync" if k is None else f"{k} behind ({VERSIONS[last - k]})"
        cells = [name, f"{rs[k]:,}"]
        for d in (1, 10):
            r = rounds[d][0][k]
            b = r["bytes_fetched"]
            cells += [f"{b:,} ({r['requests']})", f"{b / rs[k]:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
