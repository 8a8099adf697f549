#!/usr/bin/env python3
"""PulpDist beside rsync, casync, zsync and jigdo on the same update scenarios (stdlib only).

Started by `benchmarks/compare/run`, which installs the tools, finds or builds the
binaries and sets up the WAN namespaces; see README.md beside this file. For each
scenario this driver:

 1. generates version 1 upstream (gen-tree), publishes it (pulpdist publish, casync make),
    and makes each tool's downstream copy of version 1 (untimed);
 2. brings upstream to version 2 and prepares each tool's upstream side again (timed,
    as upstream cost: pulpdist publish, casync make, zsyncmake);
 3. for each link (loopback, wan): starts the servers, then runs each tool's client to
    update its own copy from version 1 to version 2 through a counting relay, timed with
    GNU time, and checks the result against upstream (sha256 of every file).

Scenario `iso` is the pool scenario's version 1, and as version 2 the same tree plus an ISO
image of its pool built by xorriso (cdimage/pool.iso): jigdo's case. jigdo-file makes its
template upstream; its client fetches the .jigdo and .template over HTTP and rebuilds the
image from the site's copy of the pool with `jigdo-file make-image`.

Results go to OUT/results.json (everything measured) and OUT/results.md (the tables).
"""

import argparse
import datetime
import functools
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = "bench"  # the PulpDist tree name
PACKAGES_REL = "dists/stable/main/binary-amd64/Packages"
SCENARIOS = ["source", "packages", "pool", "large", "iso", "botocore", "debs", "debs-iso",
             "debs-iso-update", "debs-pool", "linux-source", "debs-shared"]
# Real data (not generated): two consecutive sdists of botocore from PyPI, and for Debian
# packages with more than one version in this machine's apt sources, the two newest .debs.
REAL = {"botocore", "debs", "debs-iso", "debs-iso-update", "debs-pool", "linux-source",
        "debs-shared"}
# Scenario debs-shared (issue 20, item 4): scenario debs, in a store that also holds a tree
# of images: before the pool's version 2 is published, an image of that version's pool is
# published as tree IMAGES_TREE into the same store, so that the pool's new chunks are
# already there (written for the image) and its version 2 adds little but its index.
IMAGES_TREE = "images"
# Scenarios whose version 2 adds an ISO image of version 1's pool (jigdo's case).
ISOS = {"iso", "debs-iso"}
# Scenario debs-iso-update: scenario debs with an image of its pool in both versions (the
# image rebuilt from the updated packages: an ISO update).
# Scenario debs-iso: a pool of real .debs, this many packages whose names start with "lib"
# (every k-th of the sorted list this machine's apt sources offer, so they spread).
ISO_DEBS = 400
BOTOCORE = ("1.35.50", "1.35.51")
DEBS = ["openssl", "libssl3", "curl", "libcurl4", "openssh-client", "openssh-server", "libc6",
        "libc-bin", "linux-libc-dev", "git", "libxml2", "python3.11-minimal",
        "libpython3.11-stdlib", "postgresql-client-15", "libpq5", "tzdata", "ca-certificates",
        "bind9-libs", "libexpat1", "libde265-0"]
# Scenario debs-pool: a pool update at the scale (85 packages, about 300 MB of new
# .debs): packages that bookworm-security updates over bookworm, of 1 to 32 MiB, every k-th
# by name (not linux-*, firmware-*, debug packages).
POOL_DEBS = 105
# Scenario linux-source: a large real source release, Debian's kernel source package: the
# two newest upstream releases this machine's apt lists offer (about 75,000 files).
LINUX_SOURCE = "linux-source-6.1"
ISO_REL = "cdimage/pool.iso"  # scenario iso: the image version 2 adds
LINKS = ["loopback", "wan"]
SRV_NS, CLI_NS = "pdc-srv", "pdc-cli"
SRV_ADDR = "10.77.0.1"  # the server namespace's end of the veth pair
WAN_DELAY_MS = 40  # default one-way delay, added by relay.py (this kernel has no netem)
PD = "PulpDist"
ZSTD_BOUND = "zstd --patch-from bound"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_START_TIMEOUT = 30  # seconds a server may take to start listening


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A step that failed; its message goes into the table."""


def tail(text, n=300):
    """The last meaningful line of a tool's output, shortened, for the table."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[-n:]


def spawn(cmd, timeout, cwd=None):
    """Runs cmd in a session (process group) of its own and returns (rc, stdout, stderr);
    rc None after `timeout` seconds. On a timeout, and on any exception here (SIGTERM,
    Ctrl-C), the whole group is killed, so no grandchild outlives its step."""
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, errors="replace", start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise


def run(cmd, timeout, cwd=None):
    """Runs cmd (an untimed setup step); raises Failure on error or timeout."""
    rc, out, err = spawn(cmd, timeout, cwd)
    if rc is None:
        raise Failure(f"{Path(cmd[0]).name} timed out after {timeout}s")
    if rc != 0:
        raise Failure(f"{Path(cmd[0]).name} exited {rc}: {tail(err)}")
    return out


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def timed(cmd, timeout, ns=None, cwd=None, tmpdir="/tmp"):
    """Runs cmd under `timeout` and GNU time (in namespace ns if given). Returns a dict:
    rc, stdout, stderr, wall_s (measured here, ms resolution), cpu_s (user+sys of the
    process and its children), rss_mb (peak resident set of the largest process)."""
    tfile = Path(tmpdir) / f"time.{os.getpid()}.txt"
    tfile.unlink(missing_ok=True)
    full = (ns_prefix(ns) + ["timeout", "-k", "10", str(int(timeout)),
                             "/usr/bin/time", "-o", str(tfile), "-f", "%e %U %S %M"] + cmd)
    t0 = time.perf_counter()
    # `timeout` ends the tool; the extra minute here only guards against a stuck wrapper.
    rc, stdout, stderr = spawn(full, timeout + 60, cwd)
    wall = time.perf_counter() - t0
    out = {"rc": rc, "stdout": stdout, "stderr": stderr, "wall_s": wall,
           "cpu_s": None, "rss_mb": None}
    try:
        # GNU time writes "Command exited with non-zero status N" first on failure.
        last = tfile.read_text().strip().splitlines()[-1].split()
        out["cpu_s"] = float(last[1]) + float(last[2])
        out["rss_mb"] = int(last[3]) / 1024.0
    except (OSError, IndexError, ValueError):
        pass
    tfile.unlink(missing_ok=True)
    if rc in (124, 137, None):
        out["error"] = f"timed out after {timeout}s"
    elif rc != 0:
        out["error"] = f"exit {rc}: {tail(stderr or stdout)}"
    return out


def proc_cpu(pid):
    """CPU seconds (user+sys) of a process and its reaped children, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17).
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_file_line(path, pattern, proc, timeout):
    """Waits for a line matching pattern in path (a server's stdout); returns the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = re.search(pattern, Path(path).read_text())
        except OSError:
            m = None
        if m:
            return m
        if proc.poll() is not None:
            raise Failure(f"server exited {proc.returncode} on start: "
                          f"{tail(Path(str(path) + '.err').read_text())}")
        time.sleep(0.05)
    raise Failure(f"server did not start within {timeout}s")


def wait_listening(ns, port, proc, timeout):
    """Waits until something listens on TCP port in namespace ns (checked with ss)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(ns_prefix(ns) + ["ss", "-Hltn", f"sport = :{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           timeout=10)
        if r.stdout.strip():
            return
        if proc.poll() is not None:
            raise Failure(f"server exited {proc.returncode} on start")
        time.sleep(0.05)
    raise Failure(f"server did not listen on {port} within {timeout}s")


class Procs:
    """Every long-running process this driver starts (servers, relays): stopped on exit,
    and their pids written to PDC_PIDFILE so `run`'s trap can stop them if we die."""

    def __init__(self):
        self.procs = []
        self.pidfile = os.environ.get("PDC_PIDFILE")

    def start(self, cmd, ns=None, **kw):
        p = subprocess.Popen(ns_prefix(ns) + cmd, start_new_session=True, **kw)
        self.procs.append(p)
        if self.pidfile:
            with open(self.pidfile, "a", encoding="utf-8") as f:
                f.write(f"{p.pid}\n")
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)


PROCS = Procs()


class Relay:
    """relay.py, between one tool's client and its server; counts bytes both ways."""

    def __init__(self, target, ns, delay_ms, logdir, name):
        self.p = PROCS.start([sys.executable, str(HERE / "relay.py"), "--listen", "127.0.0.1:0",
                              "--target", target, "--delay-ms", str(delay_ms)], ns=ns,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=open(Path(logdir) / f"relay-{name}.err", "w"), text=True)
        line = self._line(SERVER_START_TIMEOUT)
        self.port = int(line.split()[1])

    def _line(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise Failure("relay did not answer")
        line = self.p.stdout.readline()
        if not line:
            raise Failure("relay exited")
        return line

    def command(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return json.loads(self._line(30))

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        PROCS.stop(self.p)


def manifest(root):
    """{relative path: entry} for everything under root: files by size and sha256,
    symlinks by target, directories by presence."""
    out = {}
    root = str(root)
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                rel = os.path.relpath(e.path, root)
                if e.is_symlink():
                    out[rel] = ("link", os.readlink(e.path))
                elif e.is_dir():
                    out[rel] = ("dir",)
                    stack.append(e.path)
                elif e.is_file():
                    with open(e.path, "rb") as f:
                        out[rel] = ("file", e.stat().st_size,
                                    hashlib.file_digest(f, "sha256").hexdigest())
                else:
                    out[rel] = ("special",)
    return out


def compare_manifests(want, got):
    """None when equal, else a short description of the differences."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    differ = [k for k in want if k in got and want[k] != got[k]]
    if not (missing or extra or differ):
        return None
    parts = []
    for name, lst in (("missing", missing), ("extra", extra), ("differ", differ)):
        if lst:
            parts.append(f"{len(lst)} {name} (e.g. {sorted(lst)[0]})")
    return "downstream != upstream: " + ", ".join(parts)


def rm_tree(path, timeout):
    if os.path.lexists(path):
        run(["rm", "-rf", str(path)], timeout)


def copy_tree(src, dst, timeout):
    rm_tree(dst, timeout)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", str(src), str(dst)], timeout)


class Bench:
    def __init__(self, args):
        self.a = args
        self.pulpdist = os.environ.get("PULPDIST", "pulpdist")
        self.gen_tree = os.environ.get("GEN_TREE", "gen-tree")
        self.work = Path(args.work).resolve()
        self.out = Path(args.out).resolve()
        self.results = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "scale": args.scale, "packages_scale": args.packages_scale,
            "links": {}, "scenarios": {}, "rows": [], "notes": [],
            "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
            "versions": self.versions(),
        }

    # ----- setup -----

    def versions(self):
        def first_line(cmd):
            try:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, timeout=10)
                return p.stdout.strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "unknown"
        here = Path(__file__).resolve().parent
        return {"pulpdist": first_line([os.environ.get("PULPDIST", "pulpdist"), "--version"]),
                # The tree the default binaries were built from (dirty: uncommitted changes).
                "pulpdist_source": first_line(["git", "-C", str(here), "describe", "--always",
                                               "--dirty"]),
                "rsync": first_line(["rsync", "--version"]),
                "casync": first_line(["casync", "--version"]),
                "zsync": first_line(["zsync", "-V"]),
                "zstd": first_line(["zstd", "--version"])}

    def gen(self, name, version, d, scale):
        if name in ISOS:
            return self.gen_iso(name, version, d, scale)
        if name == "debs-iso-update":
            return self.gen_iso_update(version, d)
        if name in REAL:
            return self.gen_real(name, version, d)
        out = run([self.gen_tree, "scenario", name, str(version), str(d), str(scale)],
                  self.a.prep_timeout)
        return json.loads(out.strip().splitlines()[-1])

    def real_version(self, name, version):
        """The directory holding version 1 or 2 of a real scenario, downloaded and unpacked
        once into WORK/downloads (kept across runs: the registry is not measured)."""
        # Scenario debs-shared is scenario debs's packages in another store.
        dl = self.work / "downloads" / ("debs" if name == "debs-shared" else name)
        out = dl / f"v{version}"
        if out.exists():
            return out
        tmp = dl / f"v{version}.tmp"
        rm_tree(tmp, self.a.prep_timeout)
        tmp.mkdir(parents=True)
        if name == "debs-iso":
            names = sorted(n for n in run(["apt-cache", "pkgnames", "lib"],
                                          self.a.prep_timeout).split()
                           if not n.endswith(("-dbgsym", "-dbg")))
            step = max(1, len(names) // ISO_DEBS)
            pool = tmp / "pool"
            pool.mkdir()
            # Packages apt cannot download (virtual names) are skipped, one at a time.
            for pkg in names[::step][:ISO_DEBS]:
                d = pool / pkg[0]
                d.mkdir(exist_ok=True)
                subprocess.run(["apt-get", "download", pkg], cwd=d, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=self.a.prep_timeout)
        elif name == "linux-source":
            ver = self.linux_versions(dl)[version - 1]
            run(["apt-get", "download", f"{LINUX_SOURCE}={ver}"], self.a.prep_timeout, cwd=dl)
            deb = next(dl.glob(f"{LINUX_SOURCE}_{ver.replace(':', '%3a')}_*.deb"))
            # The tarball inside, unpacked with its own mtimes (a release's, as published).
            run(["sh", "-c", f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO --wildcards "
                 f"'./usr/src/{LINUX_SOURCE}.tar.xz' | tar -xJ --strip-components=1 -C '{tmp}'"],
                self.a.prep_timeout)
            deb.unlink()
        elif name == "botocore":
            v = BOTOCORE[version - 1]
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"botocore=={v}", "-d", str(dl)], self.a.prep_timeout)
            # The tarball's own mtimes: a release re-stamps files whose content did not change.
            run(["tar", "xzf", str(dl / f"botocore-{v}.tar.gz"), "--strip-components=1",
                 "-C", str(tmp)], self.a.prep_timeout)
        else:
            for pkg in (DEBS if name in ("debs", "debs-shared") else self.pool_debs(dl)):
                vers = self.deb_versions(pkg)
                if len(vers) < 2:
                    continue
                # Version 1 holds the older .deb, version 2 the newer (a pool update).
                ver = vers[-2] if version == 1 else vers[-1]
                d = tmp / "pool" / "main" / pkg[0] / pkg
                d.mkdir(parents=True, exist_ok=True)
                run(["apt-get", "download", f"{pkg}={ver}"], self.a.prep_timeout, cwd=d)
        tmp.rename(out)
        return out

    def linux_versions(self, dl):
        """Scenario linux-source's two versions: the newest Debian upload of each of the two
        newest upstream releases (kept in WORK/downloads/linux-source/versions)."""
        kept = dl / "versions"
        if kept.exists():
            return kept.read_text().split()
        out = run(["apt-cache", "madison", LINUX_SOURCE], self.a.prep_timeout)
        vers = {line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2}
        def cmp(a, b):
            lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
            return -1 if lt else (0 if a == b else 1)
        newest = {}
        for v in sorted(vers, key=functools.cmp_to_key(cmp)):
            newest[v.split("-")[0]] = v
        pair = list(newest.values())[-2:]
        if len(pair) < 2:
            raise Failure(f"{LINUX_SOURCE}: apt offers fewer than two upstream releases")
        dl.mkdir(parents=True, exist_ok=True)
        kept.write_text("\n".join(pair) + "\n")
        return pair

    def pool_debs(self, dl):
        """Scenario debs-pool's packages, chosen once from this machine's apt lists and
        kept in WORK/downloads/debs-pool/packages (both versions use the same list)."""
        kept = dl / "packages"
        if kept.exists():
            return kept.read_text().split()
        def packages(pattern):
            files = sorted(Path("/var/lib/apt/lists").glob(pattern))
            if not files:
                raise Failure(f"no apt list {pattern}: run apt-get update")
            text = run(["/usr/lib/apt/apt-helper", "cat-file", str(files[0])],
                       self.a.prep_timeout)
            out = {}
            for para in text.split("\n\n"):
                f = dict(line.split(":", 1) for line in para.splitlines()
                         if ":" in line and not line.startswith(" "))
                if "Package" in f:
                    out.setdefault(f["Package"].strip(), (f.get("Version", "").strip(),
                                                          int(f.get("Size", "0"))))
            return out
        new = packages("*debian-security*bookworm-security_main_binary-amd64_Packages*")
        old = packages("*debian_dists_bookworm_main_binary-amd64_Packages*")
        names = sorted(n for n, (v, size) in new.items()
                       if n in old and old[n][0] != v and (1 << 20) <= size <= (32 << 20)
                       and not n.startswith(("linux-", "firmware-"))
                       and not n.endswith(("-dbg", "-dbgsym")))
        chosen = names[::max(1, len(names) // POOL_DEBS)][:POOL_DEBS]
        dl.mkdir(parents=True, exist_ok=True)
        kept.write_text("\n".join(chosen) + "\n")
        return chosen

    def deb_versions(self, pkg):
        """The versions apt offers for pkg, oldest first."""
        out = run(["apt-cache", "madison", pkg], self.a.prep_timeout)
        vers = sorted({line.split("|")[1].strip() for line in out.splitlines()
                       if line.count("|") >= 2 and line.split("|")[0].strip() == pkg})
        def cmp(a, b):
            lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
            return -1 if lt else (0 if a == b else 1)
        return sorted(vers, key=functools.cmp_to_key(cmp))[-2:]

    def gen_real(self, name, version, d):
        """Brings d to version 1 or 2 of a real scenario (rsync -a --delete: mtimes as
        released) and returns the facts gen-tree would."""
        src = self.real_version(name, version)
        d.mkdir(parents=True, exist_ok=True)
        run(["rsync", "-a", "--delete", f"{src}/", f"{d}/"], self.a.prep_timeout)
        now = {k: v for k, v in manifest(src).items() if v[0] == "file"}
        facts = {"files": len(now), "bytes": sum(v[1] for v in now.values()),
                 "changed_files": 0, "changed_bytes": 0, "deleted_files": 0}
        if version == 2:
            old = {k: v for k, v in manifest(self.real_version(name, 1)).items()
                   if v[0] == "file"}
            changed = [k for k, v in now.items() if old.get(k) != v]
            facts["changed_files"] = len(changed)
            facts["changed_bytes"] = sum(now[k][1] for k in changed)
            facts["deleted_files"] = len([k for k in old if k not in now])
        return facts

    def gen_iso_update(self, version, d):
        """Scenario debs-iso-update: scenario debs plus an image of its pool, in each
        version (the real packages updated in the pool and in the image)."""
        facts = self.gen_real("debs", version, d)
        image = d / ISO_REL
        image.parent.mkdir(parents=True, exist_ok=True)
        if image.exists():
            image.unlink()
        run(["xorriso", "-abort_on", "FAILURE", "-outdev", str(image), "-rockridge", "on",
             "-joliet", "on", "-map", str(d / "pool"), "/", "-commit"], self.a.prep_timeout)
        size = image.stat().st_size
        facts["files"] += 1
        facts["bytes"] += size
        if version == 2:
            facts["changed_files"] += 1
            facts["changed_bytes"] += size
        return facts

    def gen_iso(self, name, version, d, scale):
        """Scenarios iso and debs-iso: a pool (generated, or real .debs) as version 1;
        version 2 adds an image of that pool."""
        v1 = self.gen_real(name, 1, d) if name in REAL else self.gen("pool", 1, d, scale)
        if version == 1:
            return v1
        image = d / ISO_REL
        image.parent.mkdir(parents=True, exist_ok=True)
        run(["xorriso", "-abort_on", "FAILURE", "-outdev", str(image), "-rockridge", "on",
             "-joliet", "on", "-map", str(d / "pool"), "/", "-commit"], self.a.prep_timeout)
        size = image.stat().st_size
        return {"files": v1["files"] + 1, "bytes": v1["bytes"] + size, "changed_files": 1,
                "changed_bytes": size, "deleted_files": 0}

    def publish(self, w, src, tree=TREE):
        r = timed([self.pulpdist, "publish", "--store", str(w / "store"), "--tree", tree,
                   "--key", str(self.key), "--json", str(src)], self.a.prep_timeout,
                  tmpdir=w)
        if "error" in r:
            raise Failure(f"pulpdist publish: {r['error']}")
        return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "rss_mb": r["rss_mb"],
                "pulpdist": json.loads(r["stdout"])}  # the whole --json report

    def prep_timed(self, cmd, w, what, cwd=None):
        r = timed(cmd, self.a.prep_timeout, cwd=cwd, tmpdir=w)
        if "error" in r:
            raise Failure(f"{what}: {r['error']}")
        return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "rss_mb": r["rss_mb"]}

    def prepare(self, name, scale):
        """Upstream v1, each tool's downstream copy of v1, then upstream v2 and each tool's
        upstream preparation of it. Returns the scenario's facts and peer failures."""
        w = self.work / name
        rm_tree(w, self.a.prep_timeout)
        (w / "pub").mkdir(parents=True)
        up, base = w / "up", w / "base"
        info = {"scale": scale, "upstream": {}, "failed": {}}
        t0 = time.perf_counter()
        info["v1"] = self.gen(name, 1, up, scale)
        info["gen_v1_s"] = time.perf_counter() - t0
        log(f"{name}: v1 generated: {info['v1']} ({info['gen_v1_s']:.1f}s)")

        info["upstream"]["pulpdist publish v1"] = self.publish(w, up)
        if name == "large" or self.a.republish_all:
            # Scale figure: publishing an unchanged tree, against a plain stat walk.
            info["upstream"]["pulpdist publish unchanged"] = self.publish(w, up)
            r = timed(["sh", "-c", 'find "$1" -printf "%s %T@\\n" > /dev/null', "sh",
                       str(up)], self.a.prep_timeout, tmpdir=w)
            info["upstream"]["find stat walk"] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                                  "rss_mb": r["rss_mb"]}
        try:
            # casync keeps its encoder cache between makes, as PulpDist its file cache.
            info["upstream"]["casync make v1"] = self.prep_timed(
                ["casync", "make", f"--store={w / 'pub' / 'castore'}",
                 f"--cache={w / 'casync-cache'}", str(w / "pub" / "v1.caidx"), str(up)], w,
                "casync make v1")
        except Failure as e:
            info["failed"]["casync"] = str(e)

        # Downstream copies of v1: a plain copy (rsync, and casync's seed) and a PulpDist
        # mirror with its client state, made by an untimed sync from a local server.
        copy_tree(up, base / "plain", self.a.prep_timeout)
        if name in ISOS and "jigdo" not in info["failed"]:
            # jigdo-file's caches (untimed): upstream, of the files it has read, as an
            # operator who made earlier images has it; on the site, of its copy of the
            # pool, as a site that rebuilt an earlier image has it.
            site_cache = (w / "jigdo-upstream.cache", up / "pool"), (
                base / "jigdo-site.cache", base / "plain" / "pool")
            for cache, pool in site_cache:
                try:
                    run(["jigdo-file", "scan", f"--cache={cache}", f"{pool}//"],
                        self.a.prep_timeout)
                except (Failure, subprocess.TimeoutExpired) as e:
                    info["failed"]["jigdo"] = f"jigdo-file scan: {e}"
        (base / "pd").mkdir(parents=True)
        srv = self.start_pulpdist(w, None, "127.0.0.1", "initial")
        try:
            r = timed([self.pulpdist, "sync", "--store", f"http://127.0.0.1:{srv[1]}",
                       "--tree", TREE, "--trust", f"{self.key}.pub", "--json",
                       str(base / "pd" / "mirror")], self.a.prep_timeout, tmpdir=w)
        finally:
            PROCS.stop(srv[0])
        if "error" in r:
            raise Failure(f"initial pulpdist sync: {r['error']}")
        info["initial_sync"] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                "rss_mb": r["rss_mb"], "pulpdist": json.loads(r["stdout"])}
        log(f"{name}: PulpDist's downstream copy of v1 made in {r['wall_s']:.1f}s")

        t0 = time.perf_counter()
        info["v2"] = self.gen(name, 2, up, scale)
        info["gen_v2_s"] = time.perf_counter() - t0
        log(f"{name}: v2 generated: {info['v2']}")
        if name == "debs-shared":
            # The image tree first: the pool's new chunks land in the store with it.
            images = w / "images"
            image = images / ISO_REL
            image.parent.mkdir(parents=True)
            run(["xorriso", "-abort_on", "FAILURE", "-outdev", str(image), "-rockridge", "on",
                 "-joliet", "on", "-map", str(up / "pool"), "/", "-commit"],
                self.a.prep_timeout)
            info["upstream"]["pulpdist publish image tree"] = self.publish(w, images,
                                                                           IMAGES_TREE)
        info["upstream"]["pulpdist publish v2"] = self.publish(w, up)
        if "casync" not in info["failed"]:
            try:
                info["upstream"]["casync make v2"] = self.prep_timed(
                    ["casync", "make", f"--store={w / 'pub' / 'castore'}",
                     f"--cache={w / 'casync-cache'}", str(w / "pub" / "v2.caidx"), str(up)],
                    w, "casync make v2")
            except Failure as e:
                info["failed"]["casync"] = str(e)
        if name == "packages":
            z = w / "pub" / "zsync"
            z.mkdir()
            shutil.copy2(up / PACKAGES_REL, z / "Packages")
            try:
                info["upstream"]["zsyncmake"] = self.prep_timed(
                    ["zsyncmake", "-u", "Packages", "-o", "Packages.zsync", "Packages"], w,
                    "zsyncmake", cwd=z)
            except Failure as e:
                info["failed"]["zsync"] = str(e)

        if name in ISOS:
            self.prepare_iso(w, up, info)

        log(f"{name}: hashing v1 and v2 for the checks and the zstd bound")
        self.want = manifest(up)
        v1 = manifest(base / "plain")
        if name in ISOS:
            # A new file has no reference: the bound would be the image compressed alone.
            self.results["notes"].append(f"{name}: no zstd bound (the image is a new file)")
        elif not self.a.no_zstd_bound:
            try:
                info["zstd_bound"] = self.zstd_bound(base / "plain", up, v1, self.want)
            except (Failure, subprocess.TimeoutExpired) as e:
                self.results["notes"].append(f"{name}: no zstd bound: {e}")
        return info

    def prepare_iso(self, w, up, info):
        """jigdo-file's template (served for its client) and PulpDist's, for their sizes."""
        j = w / "pub" / "jigdo"
        j.mkdir()
        image = up / ISO_REL
        try:
            info["upstream"]["jigdo-file make-template"] = self.prep_timed(
                ["jigdo-file", "make-template", "--force", f"--image={image}",
                 f"--cache={w / 'jigdo-upstream.cache'}",
                 f"--jigdo={j / 'pool.jigdo'}", f"--template={j / 'pool.template'}",
                 f"{up / 'pool'}//"], w, "jigdo-file make-template")
        except Failure as e:
            info["failed"]["jigdo"] = str(e)
        tpl = w / "pool.tpl"
        info["upstream"]["pulpdist iso template"] = self.prep_timed(
            [self.pulpdist, "iso", "template", str(image), "--out", str(tpl)], w,
            "pulpdist iso template")
        info["iso"] = {"image_bytes": image.stat().st_size,
                       "pulpdist_template_bytes": tpl.stat().st_size}
        if "jigdo" not in info["failed"]:
            info["iso"]["jigdo_bytes"] = (j / "pool.jigdo").stat().st_size
            info["iso"]["jigdo_template_bytes"] = (j / "pool.template").stat().st_size

    @staticmethod
    def same_package(rel, old):
        """For a file new at its path, the old file of the same directory and package name
        (the name up to its first `_`: Debian's name_version_arch.deb), as a site would
        take it; None without one."""
        d, name = os.path.split(rel)
        if "_" not in name:
            return None
        key = name.split("_")[0] + "_"
        refs = sorted(k for k, v in old.items() if v[0] == "file" and os.path.dirname(k) == d
                      and os.path.basename(k).startswith(key))
        return refs[-1] if refs else None

    def zstd_bound(self, old_root, new_root, old, new):
        """Reference: what shipping zstd -19 patches would cost, per changed file against
        its old version (new files compressed alone). No protocol or metadata at all."""
        total, files = 0, 0
        t0 = time.perf_counter()
        for rel, e in sorted(new.items()):
            if e[0] != "file" or old.get(rel) == e:
                continue
            files += 1
            cmd = ["zstd", "-19", "-q", "-c"]
            ref = rel if old.get(rel, ("",))[0] == "file" else self.same_package(rel, old)
            if ref is not None:
                cmd.append(f"--patch-from={old_root / ref}")
            cmd.append(str(new_root / rel))
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=self.a.timeout)
            if p.returncode != 0:
                raise Failure(f"zstd: {tail(p.stderr.decode(errors='replace'))}")
            total += len(p.stdout)
        return {"bytes": total, "files": files, "wall_s": time.perf_counter() - t0}

    # ----- servers -----

    def start_pulpdist(self, w, ns, addr, tag):
        out = w / f"serve-{tag}.out"
        p = PROCS.start([self.pulpdist, "serve", "--store", str(w / "store"),
                         "--listen", f"{addr}:0"], ns=ns, stdout=open(out, "w"),
                        stderr=open(str(out) + ".err", "w"))
        m = wait_file_line(out, r"http://[0-9.]+:(\d+)", p, SERVER_START_TIMEOUT)
        return p, int(m.group(1))

    def start_rsyncd(self, w, ns, addr, tag):
        port = free_port()
        conf = w / f"rsyncd-{tag}.conf"
        conf.write_text(
            f"# written by benchmarks/compare: one read-only module, the upstream tree\n"
            f"use chroot = no\nuid = root\ngid = root\nmax connections = 16\n"
            f"log file = {w / f'rsyncd-{tag}.log'}\npid file = {w / f'rsyncd-{tag}.pid'}\n"
            f"[mod]\n    path = {w / 'up'}\n    read only = yes\n")
        p = PROCS.start(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                         f"--port={port}", f"--address={addr}"], ns=ns,
                        stdout=subprocess.DEVNULL, stderr=open(w / f"rsyncd-{tag}.err", "w"))
        wait_listening(ns, port, p, SERVER_START_TIMEOUT)
        return p, port

    def start_httpd(self, w, ns, addr, tag):
        out = w / f"httpd-{tag}.out"
        p = PROCS.start([sys.executable, str(HERE / "httpd.py"), "--root", str(w / "pub"),
                         "--listen", f"{addr}:0", "--log", str(w / f"http-{tag}.log")], ns=ns,
                        stdout=open(out, "w"), stderr=open(str(out) + ".err", "w"))
        m = wait_file_line(out, r"listening (\d+)", p, SERVER_START_TIMEOUT)
        return p, int(m.group(1))

    # ----- one link -----

    def run_link(self, name, info, link):
        w = self.work / name
        ns_srv, ns_cli, addr, delay = ((SRV_NS, CLI_NS, SRV_ADDR, self.a.wan_delay_ms) if link == "wan"
                                       else (None, None, "127.0.0.1", 0))
        d = w / link
        d.mkdir()
        servers, relays = {}, {}
        try:
            for kind, start in (("pulpdist", self.start_pulpdist), ("rsync", self.start_rsyncd),
                                ("http", self.start_httpd)):
                servers[kind] = start(w, ns_srv, addr, link)
                relays[kind] = Relay(f"{addr}:{servers[kind][1]}", ns_cli, delay, d, kind)
            tools = [PD, "rsync", "rsync -z", "casync"]
            if name == "packages":
                tools.append("zsync")
            if name in ISOS:
                tools.append("jigdo")
            for tool in tools:
                runs = []
                for i in range(self.a.runs):
                    row = {"scenario": name, "link": link, "tool": tool}
                    failed = info["failed"].get(tool.split()[0])
                    if failed:
                        row["error"] = failed
                    else:
                        log(f"{name}/{link}: {tool}" + (f" (run {i + 1})" if self.a.runs > 1
                                                         else ""))
                        tdir = d / re.sub(r"[^a-z]+", "-", tool.lower()).strip("-")
                        try:
                            self.run_tool(w, tdir, tool, servers, relays, ns_cli, row)
                        except Failure as e:
                            row["error"] = str(e)
                        except Exception as e:  # a harness bug or odd output: still one row
                            row["error"] = f"harness error: {type(e).__name__}: {e}"
                        # The next run starts from its own fresh copy (also with
                        # --keep-work; on SIGTERM the scratch stays: no race).
                        if not self.a.keep_work or i + 1 < self.a.runs:
                            try:
                                rm_tree(tdir, self.a.prep_timeout)
                            except Failure as e:
                                log(f"{name}/{link}: could not delete {tdir}: {e}")
                    runs.append(row)
                    if "error" in row:
                        log(f"{name}/{link}: {tool} FAILED: {row['error']}")
                        break
                self.results["rows"].append(median_row(runs))
        finally:
            for r in relays.values():
                r.stop()
            for p, _ in servers.values():
                PROCS.stop(p)

    def run_tool(self, w, tdir, tool, servers, relays, ns, row):
        """Updates the tool's own copy of v1 in tdir to v2 through its relay; fills row."""
        base, d = w / "base", tdir.parent
        kind = {"rsync": "rsync", "rsync -z": "rsync"}.get(tool, "pulpdist" if tool == PD
                                                            else "http")
        relay, srv = relays[kind], servers[kind][0]
        url = f"127.0.0.1:{relay.port}"
        # Each tool's downstream copy of v1 (untimed).
        if tool == PD:
            copy_tree(base / "pd", tdir, self.a.prep_timeout)
            dest = tdir / "mirror"
            cmd = [self.pulpdist, "sync", "--store", f"http://{url}", "--tree", TREE,
                   "--trust", f"{self.key}.pub", "--json", str(dest)]
        elif kind == "rsync":
            copy_tree(base / "plain", tdir, self.a.prep_timeout)
            dest = tdir
            cmd = ["rsync", "-a", "--delete", "--stats"] + (["-z"] if "-z" in tool else []) + [
                f"rsync://{url}/mod/", f"{dest}/"]
        elif tool == "casync":
            tdir.mkdir()
            dest = tdir / "new"
            cmd = ["casync", "extract", f"--store=http://{url}/castore",
                   f"--seed={base / 'plain'}", f"http://{url}/v2.caidx", str(dest)]
        elif tool == "jigdo":  # what jigdo-lite does when every file is local
            # With the site's cache, warm. jigdo-file 0.8 with a warm cache finds some
            # files of the pool but not all (reproduced by hand on four .debs: "Found 3 of
            # the 4 files", then "repeat command and supply more files"; without the cache
            # it finds all four), so, as jigdo-lite's loop would, a second make-image
            # without the cache finishes the image from its temporary file. Both timed.
            tdir.mkdir()
            dest = tdir / "pool.iso"
            make = ('jigdo-file make-image --force --image="$1/pool.iso" '
                    '--jigdo="$1/pool.jigdo" --template="$1/pool.template"')
            cmd = ["sh", "-c",
                   'curl -sSf -o "$1/pool.jigdo" "$2/jigdo/pool.jigdo" && '
                   'curl -sSf -o "$1/pool.template" "$2/jigdo/pool.template" && '
                   f'{{ {make} --cache="$4" "$3//" >/dev/null; '
                   f'if [ -e "$1/pool.iso.tmp" ]; then {make} "$3//" >/dev/null; fi; }} && '
                   '[ -e "$1/pool.iso" ]',
                   "sh", str(tdir), f"http://{url}", str(base / "plain" / "pool"),
                   str(base / "jigdo-site.cache")]
        else:  # zsync: the one file
            tdir.mkdir()
            dest = tdir / "Packages"
            cmd = ["zsync", "-q", "-i", str(base / "plain" / PACKAGES_REL), "-o", str(dest),
                   f"http://{url}/zsync/Packages.zsync"]
        http_log = w / f"http-{row['link']}.log"
        log_at = http_log.stat().st_size if http_log.exists() else 0
        relay.command("reset")
        cpu0 = proc_cpu(srv.pid)
        r = timed(cmd, self.a.timeout, ns=ns, cwd=tdir, tmpdir=d)
        stats = relay.command("stats")
        time.sleep(0.2)  # lets a forking server (rsync) reap its child, for its CPU time
        cpu1 = proc_cpu(srv.pid)
        row.update(wall_s=r["wall_s"], cpu_s=r["cpu_s"], rss_mb=r["rss_mb"],
                   wire_bytes=stats["up"] + stats["down"], wire_up=stats["up"],
                   wire_down=stats["down"], connections=stats["connections"],
                   server_cpu_s=(cpu1 - cpu0) if None not in (cpu0, cpu1) else None)
        if kind == "http":
            with open(http_log, encoding="utf-8") as f:
                f.seek(log_at)
                reqs = [json.loads(ln) for ln in f if ln.strip()]
            row["requests"] = len(reqs)
            row["tool_bytes"] = sum(q["bytes"] for q in reqs)
        if "error" in r:
            raise Failure(f"{tool}: {r['error']}")
        if tool == PD:
            j = json.loads(r["stdout"])
            row["requests"] = j["requests"]
            row["tool_bytes"] = j["bytes_fetched"]
            row["pulpdist"] = j  # the whole --json report (delta fields too, where built)
        elif kind == "rsync":
            row["requests"] = stats["connections"]
            m = re.search(r"Total bytes received: ([\d,]+)", r["stdout"])
            row["tool_bytes"] = int(m.group(1).replace(",", "")) if m else None
        # The check: downstream equals upstream v2, file by file.
        if tool in ("zsync", "jigdo"):
            rel, name = (PACKAGES_REL, "Packages") if tool == "zsync" else (ISO_REL, "pool.iso")
            want = self.want.get(rel)
            got = manifest(tdir).get(name)
            diff = None if got and want and got[1:] == want[1:] else f"{name} differs"
        else:
            diff = compare_manifests(self.want, manifest(dest))
        if diff:
            raise Failure(f"{tool}: {diff}")
        row["verified"] = True
        if tool == PD:
            # A no-op sync right after: what checking an up-to-date mirror costs.
            relay.command("reset")
            r2 = timed(cmd, self.a.timeout, ns=ns, cwd=tdir, tmpdir=d)
            s2 = relay.command("stats")
            if "error" in r2:
                row["noop"] = {"error": r2["error"]}
            else:
                j2 = json.loads(r2["stdout"])
                row["noop"] = {"wall_s": r2["wall_s"], "cpu_s": r2["cpu_s"],
                               "rss_mb": r2["rss_mb"], "requests": j2["requests"],
                               "bytes_fetched": j2["bytes_fetched"],
                               "wire_bytes": s2["up"] + s2["down"],
                               "up_to_date": j2.get("up_to_date")}

    # ----- the whole run -----

    def main(self):
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.key = self.work / "key"
        if not self.key.exists():
            run([self.pulpdist, "keygen", str(self.key)], 60)
        links = list(self.a.links)
        wan_err = os.environ.get("PDC_WAN_ERROR")
        if "wan" in links:
            if wan_err:
                self.results["notes"].append(f"wan link not run: {wan_err}")
                links.remove("wan")
            else:
                tbf = os.environ.get("PDC_TBF", "unknown")
                self.results["links"]["wan"] = {
                    "namespaces": [SRV_NS, CLI_NS], "delay_ms_each_way": self.a.wan_delay_ms,
                    "delay_by": "relay.py (no netem in this kernel)",
                    "rate_limit": (f"tbf {os.environ.get('PDC_WAN_RATE', self.a.wan_rate)} "
                                   "burst 64kb latency 400ms, both veth ends")
                    if tbf == "1" else f"none: tbf unavailable ({tbf})"}
                if tbf != "1":
                    self.results["notes"].append(
                        f"wan link has NO rate limit: tc tbf failed ({tbf}); delay only")
        if "loopback" in links:
            self.results["links"]["loopback"] = {"relay": "0 ms delay, counts bytes"}
        for name in self.a.scenarios:
            scale = self.a.packages_scale if name == "packages" else self.a.scale
            log(f"== scenario {name} (scale {scale})")
            try:
                info = self.prepare(name, scale)
            except (Failure, OSError, ValueError, KeyError) as e:
                log(f"{name}: preparation failed: {e}")
                self.results["scenarios"][name] = {"scale": scale, "error": str(e)}
                self.save()
                continue
            self.results["scenarios"][name] = info
            if "zstd_bound" in info:
                for link in links:
                    self.results["rows"].append({
                        "scenario": name, "link": link, "tool": ZSTD_BOUND,
                        "wire_bytes": info["zstd_bound"]["bytes"], "verified": None})
            for link in links:
                try:
                    self.run_link(name, info, link)
                except Failure as e:
                    log(f"{name}/{link}: {e}")
                    self.results["rows"].append({"scenario": name, "link": link,
                                                 "tool": "(servers)", "error": str(e)})
                self.save()
            if not self.a.keep_work:
                rm_tree(self.work / name, self.a.prep_timeout)
        self.results["finished"] = datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds")
        self.save()
        print(render(self.results, self.a))
        log(f"results: {self.out / 'results.md'} and {self.out / 'results.json'}")

    def save(self):
        compute_ratios(self.results)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        (self.out / "results.md").write_text(render(self.results, self.a) + "\n")


# ----- reporting -----

def median_row(runs):
    """One tool's runs as one row: the run of median wall time (its bytes, requests, CPU),
    with every run's wall time, bytes and requests under "runs". A failed run is the row."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        row["runs"] = [{k: r.get(k) for k in ("wall_s", "cpu_s", "wire_bytes", "requests")}
                       for r in runs]
    return row


PEER_METRICS = ["wire_bytes", "requests", "wall_s", "cpu_s", "rss_mb"]


def compute_ratios(res):
    """Each row's metric divided by the best (smallest) value among the peers (the tools
    other than PulpDist and the zstd reference) on the same scenario and link."""
    groups = {}
    for row in res["rows"]:
        groups.setdefault((row["scenario"], row["link"]), []).append(row)
    for rows in groups.values():
        peers = [r for r in rows if r["tool"] not in (PD, ZSTD_BOUND, "(servers)")
                 and "error" not in r]
        for m in PEER_METRICS:
            vals = [(r[m], r["tool"]) for r in peers if r.get(m) is not None]
            if not vals:
                continue
            best, who = min(vals)
            for r in rows:
                if r.get(m) is not None and "error" not in r:
                    r.setdefault("vs_best_peer", {})[m] = {
                        "ratio": (r[m] / best) if best else None, "best_peer": who}


def fmt_int(v):
    return "–" if v is None else f"{int(v):,}"


def fmt_s(v):
    return "–" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def fmt_mb(v):
    return "–" if v is None else f"{v:.1f}"


def fmt_ratio(row, m):
    x = row.get("vs_best_peer", {}).get(m, {}).get("ratio")
    return "–" if x is None else f"{x:.2f}×"


def render(res, a):
    links = [ln for ln in LINKS if ln in res["links"]]
    lines = [f"PulpDist beside its peers, update v1 → v2 (scale {res['scale']}; packages at "
             f"scale {res['packages_scale']}; {res['host']['cpus']} cores, "
             f"{res['started']})", ""]
    for note in res["notes"]:
        lines += [f"**Note: {note}**", ""]
    lines.append("Wire bytes: TCP payload both ways through the relay. Requests: HTTP requests "
                 "(rsync: connections). CPU and peak RSS: the client process (and its "
                 "children). × best peer: this row over the best of rsync, rsync -z, casync, "
                 "zsync, jigdo on the same scenario and link."
                 + (f" Each row: the run of median wall time of {a.runs} (every run's wall "
                    "time after the table)." if a.runs > 1 else ""))
    lines.append("")
    cols = ["bytes", "req", "wall s", "CPU s", "RSS MB", "bytes × best peer",
            "wall × best peer"]
    head = ["scenario", "tool"] + [f"{ln} {c}" for ln in links for c in cols]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    order = [PD, "rsync", "rsync -z", "casync", "zsync", "jigdo", ZSTD_BOUND, "(servers)"]
    by = {}
    for row in res["rows"]:
        by[(row["scenario"], row["tool"], row["link"])] = row
    for name in [s for s in SCENARIOS if s in res["scenarios"]]:
        sc = res["scenarios"][name]
        if "error" in sc:
            lines.append(f"| {name} | (preparation) | FAIL: {sc['error']} |"
                         + " |" * (len(head) - 3))
            continue
        for tool in order:
            cells = []
            present = False
            for ln in links:
                row = by.get((name, tool, ln))
                if row is None:
                    cells += ["–"] * len(cols)
                    continue
                present = True
                if "error" in row:
                    cells += [f"FAIL: {row['error']}"] + ["–"] * (len(cols) - 1)
                    continue
                cells += [fmt_int(row.get("wire_bytes")), fmt_int(row.get("requests")),
                          fmt_s(row.get("wall_s")), fmt_s(row.get("cpu_s")),
                          fmt_mb(row.get("rss_mb")), fmt_ratio(row, "wire_bytes"),
                          fmt_ratio(row, "wall_s")]
            if present:
                label = f"**{tool}**" if tool == PD else tool
                lines.append(f"| {name} | {label} | " + " | ".join(
                    c.replace("|", "/") for c in cells) + " |")
    if a.runs > 1:
        lines += ["", "Wall seconds of every run (bytes differing between runs marked *):", "",
                  "| scenario | tool | link | wall s, each run | bytes |", "|---|---|---|---|---|"]
        for row in res["rows"]:
            if "runs" not in row:
                continue
            walls = ", ".join(fmt_s(r["wall_s"]) for r in row["runs"])
            sizes = {r["wire_bytes"] for r in row["runs"]}
            mark = "" if len(sizes) == 1 else " *"
            lines.append(f"| {row['scenario']} | {row['tool']} | {row['link']} | {walls} | "
                         f"{fmt_int(row.get('wire_bytes'))}{mark} |")
    lines += ["", render_changes(res), "", render_pulpdist(res, links), "",
              render_upstream(res, links), "", render_iso(res, links), "",
              render_scale(res, links)]
    return "\n".join(lines).rstrip() + "\n"


def render_changes(res):
    """What each scenario changes, for reading the bytes against."""
    out = ["What changed upstream (v1 → v2):", "",
           "| scenario | files v2 | bytes v2 | changed files | changed bytes | deleted files |"
           " zstd -19 --patch-from bound |", "|---|---|---|---|---|---|---|"]
    for name, sc in res["scenarios"].items():
        if "v2" not in sc:
            continue
        v = sc["v2"]
        zb = sc.get("zstd_bound", {}).get("bytes")
        out.append(f"| {name} | {v['files']:,} | {v['bytes']:,} | {v['changed_files']:,} | "
                   f"{v['changed_bytes']:,} | {v['deleted_files']:,} | {fmt_int(zb)} |")
    return "\n".join(out)


def render_pulpdist(res, links):
    """PulpDist's own report of each update, beside what changed upstream."""
    out = ["PulpDist's own report (sync --json) of each update:", "",
           "| scenario | link | payload bytes | changed bytes upstream | payload / changed |"
           " chunks fetched / reused | delta bytes / files | delta not used because |",
           "|---|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        j = row.get("pulpdist")
        sc = res["scenarios"].get(row["scenario"], {})
        if row["tool"] != PD or not j or "v2" not in sc:
            continue
        changed = sc["v2"]["changed_bytes"]
        fetched = j.get("bytes_fetched", 0)
        ratio = f"{fetched / changed:.2f}" if changed else "–"
        delta = (f"{j['delta_bytes']:,} / {j.get('delta_files', 0):,}"
                 if "delta_bytes" in j else "(not in this build)")
        why = j.get("delta_error") or ""
        if j.get("delta_failed"):
            why = f"{why} {j['delta_failed']} records failed".strip()
        out.append(f"| {row['scenario']} | {row['link']} | {fetched:,} | {changed:,} | {ratio} |"
                   f" {fmt_int(j.get('chunks_fetched'))} / {fmt_int(j.get('chunks_reused'))} |"
                   f" {delta} | {why.replace('|', '/')} |")
    return "\n".join(out)


def render_upstream(res, links):
    """Upstream cost: preparing v2 once, and the server's CPU per client update."""
    ln = "loopback" if "loopback" in links else (links[0] if links else None)
    out = ["Upstream cost: preparing version 2 once (wall s / CPU s), and server CPU "
           f"seconds per client update ({ln} link; the casync/zsync server is a Python "
           "static file server, so read its CPU with that in mind).", "",
           "| scenario | pulpdist publish v2 | casync make v2 | zsyncmake | server CPU s: "
           "PulpDist / rsync / rsync -z / casync / zsync |", "|---|---|---|---|---|"]

    def ws(x):
        return "–" if not x else f"{fmt_s(x['wall_s'])} / {fmt_s(x['cpu_s'])}"
    for name, sc in res["scenarios"].items():
        if "upstream" not in sc:
            continue
        u = sc["upstream"]
        cpu = []
        for tool in (PD, "rsync", "rsync -z", "casync", "zsync"):
            row = next((r for r in res["rows"] if r["scenario"] == name and r["link"] == ln
                        and r["tool"] == tool), None)
            cpu.append(fmt_s(row.get("server_cpu_s")) if row and "error" not in row else "–")
        out.append(f"| {name} | {ws(u.get('pulpdist publish v2'))} | "
                   f"{ws(u.get('casync make v2'))} | {ws(u.get('zsyncmake'))} | "
                   f"{' / '.join(cpu)} |")
    return "\n".join(out)


def render_iso(res, links):
    """Scenarios iso and debs-iso: jigdo's template against what a PulpDist site fetches
    for the image."""
    return "\n\n".join(t for t in (render_one_iso(res, links, n) for n in sorted(ISOS)) if t)


def render_one_iso(res, links, name):
    """One ISO scenario's table."""
    sc = res["scenarios"].get(name)
    if not sc or "iso" not in sc:
        return ""
    i, u = sc["iso"], sc["upstream"]
    jig = (i["jigdo_bytes"] + i["jigdo_template_bytes"]) if "jigdo_bytes" in i else None
    out = [f"ISO image (scenario {name}: {i['image_bytes']:,}-byte image of the pool a site "
           "already has), PulpDist beside jigdo-file:", "", "| figure | jigdo-file | PulpDist |"
           " PulpDist / jigdo |", "|---|---|---|---|"]
    if "jigdo_bytes" in i:
        out.append(f"| jigdo's .template alone / .jigdo alone | {fmt_int(i['jigdo_template_bytes'])}"
                   f" / {fmt_int(i['jigdo_bytes'])} | | |")

    def ratio(a, b):
        return "–" if a is None or not b else f"{a / b:.2f}"
    out.append(f"| template bytes (jigdo: .jigdo + .template) | {fmt_int(jig)} | "
               f"{fmt_int(i['pulpdist_template_bytes'])} | "
               f"{ratio(i['pulpdist_template_bytes'], jig)} |")
    mj, mp = u.get("jigdo-file make-template"), u.get("pulpdist iso template")
    if mj and mp:
        out.append(f"| make the template: wall / CPU s | {fmt_s(mj['wall_s'])} / "
                   f"{fmt_s(mj['cpu_s'])} | {fmt_s(mp['wall_s'])} / {fmt_s(mp['cpu_s'])} | "
                   f"{ratio(mp['wall_s'], mj['wall_s'])} |")
    for ln in links:
        rows = {r["tool"]: r for r in res["rows"] if r["scenario"] == name and r["link"] == ln}
        pd, jr = rows.get(PD, {}), rows.get("jigdo", {})
        if "error" in pd or "error" in jr:
            continue
        out.append(f"| {ln}: bytes on the wire for the image (PulpDist: the whole update) | "
                   f"{fmt_int(jr.get('wire_bytes'))} | {fmt_int(pd.get('wire_bytes'))} | "
                   f"{ratio(pd.get('wire_bytes'), jr.get('wire_bytes'))} |")
        out.append(f"| {ln}: fetch + rebuild: wall s / peak RSS MB | {fmt_s(jr.get('wall_s'))} "
                   f"/ {fmt_mb(jr.get('rss_mb'))} | {fmt_s(pd.get('wall_s'))} / "
                   f"{fmt_mb(pd.get('rss_mb'))} | {ratio(pd.get('wall_s'), jr.get('wall_s'))} |")
    return "\n".join(out)


def render_scale(res, links):
    """The scale figures of the large scenario."""
    sc = res["scenarios"].get("large")
    if not sc or "upstream" not in sc:
        return ""
    u = sc["upstream"]
    files = sc["v1"]["files"]
    out = [f"Scale figures (scenario large: {files:,} files, "
           f"{sc['v2']['changed_files']:,} changed):", "", "| figure | value |", "|---|---|"]
    pu, fw = u.get("pulpdist publish unchanged"), u.get("find stat walk")
    if pu and fw:
        out.append(f"| publish of the unchanged tree: wall / CPU s | {fmt_s(pu['wall_s'])} / "
                   f"{fmt_s(pu['cpu_s'])} (peak RSS {fmt_mb(pu['rss_mb'])} MB) |")
        out.append(f"| stat walk, `find -printf '%s %T@'`: wall / CPU s | "
                   f"{fmt_s(fw['wall_s'])} / {fmt_s(fw['cpu_s'])} |")
        if fw["wall_s"]:
            out.append(f"| publish unchanged / stat walk (wall) | "
                       f"{pu['wall_s'] / fw['wall_s']:.2f}× |")
    pv = u.get("pulpdist publish v2")
    if pv:
        out.append(f"| publish of v2 ({sc['v2']['changed_files']:,} files changed): "
                   f"wall / CPU s | {fmt_s(pv['wall_s'])} / {fmt_s(pv['cpu_s'])} |")
    for ln in links:
        row = next((r for r in res["rows"] if r["scenario"] == "large" and r["link"] == ln
                    and r["tool"] == PD), None)
        if not row:
            continue
        if "error" in row:
            out.append(f"| {ln}: update sync | FAIL: {row['error']} |")
            continue
        rss = row.get("rss_mb")
        verdict = "" if rss is None else (" (under the 256 MB target)" if rss < 256
                                          else " (**over the 256 MB target**)")
        out.append(f"| {ln}: update sync: requests / wire bytes / payload bytes | "
                   f"{fmt_int(row.get('requests'))} / {fmt_int(row.get('wire_bytes'))} / "
                   f"{fmt_int(row.get('tool_bytes'))} |")
        out.append(f"| {ln}: update sync: wall / CPU s | {fmt_s(row.get('wall_s'))} / "
                   f"{fmt_s(row.get('cpu_s'))} |")
        out.append(f"| {ln}: update sync: peak RSS MB | {fmt_mb(rss)}{verdict} |")
        n = row.get("noop")
        if n and "error" not in n:
            out.append(f"| {ln}: no-op sync: requests / wire bytes / wall s / peak RSS MB | "
                       f"{fmt_int(n['requests'])} / {fmt_int(n['wire_bytes'])} / "
                       f"{fmt_s(n['wall_s'])} / {fmt_mb(n['rss_mb'])} |")
        elif n:
            out.append(f"| {ln}: no-op sync | FAIL: {n['error']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(prog="benchmarks/compare/run",
                                 description="PulpDist beside rsync, casync and zsync on the "
                                 "same update scenarios (see README.md)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="scenario scale (1.0: the full shapes; large is 1,000,000 files)")
    ap.add_argument("--packages-scale", type=float, default=1.0,
                    help="scale of the packages scenario (one file, cheap: default 1.0)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated, of: %(default)s")
    ap.add_argument("--links", default=",".join(LINKS), help="comma-separated, of: %(default)s")
    ap.add_argument("--wan-delay-ms", type=int, default=WAN_DELAY_MS,
                    help="the wan link's delay each way, in ms (relay.py)")
    ap.add_argument("--wan-rate", default="50mbit",
                    help="the wan link's rate (tc tbf, set by `run`)")
    ap.add_argument("--out", default=str(HERE / "out"),
                    help="where results.md and results.json go (default: out/ beside this)")
    ap.add_argument("--work", default=os.environ.get("PDC_WORK", "/tmp/pulpdist-compare"),
                    help="scratch directory for the trees, stores and copies")
    ap.add_argument("--timeout", type=int, default=1800,
                    help="seconds one tool's update may take")
    ap.add_argument("--prep-timeout", type=int, default=3 * 3600,
                    help="seconds one setup step (generate, publish, copy, delete) may take")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch trees")
    ap.add_argument("--runs", type=int, default=1,
                    help="updates per tool and link, each from a fresh copy of v1; the "
                         "table shows the run of median wall time, results.json every run")
    ap.add_argument("--republish-all", action="store_true",
                    help="measure the unchanged-tree publish on every scenario, not only large")
    ap.add_argument("--no-zstd-bound", action="store_true", help="skip the zstd reference row")
    a = ap.parse_args()
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.links = [s for s in a.links.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    for s in a.links:
        if s not in LINKS:
            ap.error(f"unknown link {s!r} (known: {', '.join(LINKS)})")

    # SIGTERM (from `run`'s trap or timeout) unwinds like Ctrl-C, so servers get stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        Bench(a).main()
    finally:
        PROCS.stop_all()


if __name__ == "__main__":
    main()
