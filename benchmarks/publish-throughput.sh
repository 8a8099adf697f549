#!/bin/sh
# Issue 20, "an honest harness": publish throughput end to end on one core (files in,
# packs written and flushed, head written) beside its bounds on the same core: a plain
# copy of the same files flushed to disk (`cp` then `sync FILE...`), and BLAKE3 of their
# bytes (`b3sum --num-threads 1`); and `casync make` (one thread) as a peer. The input is
# real .debs from this machine's apt sources (downloaded once into WORK/debs: the registry
# is not measured), which do not compress. Every tool reads the files once before the runs
# (warm page cache for all); each run starts from an empty store or copy. Five runs of
# each, interleaved (the machine is shared); prints each run and the medians.
#
#   benchmarks/publish-throughput.sh [WORK] [CORE]
# Binary: $PULPDIST, or target/release/pulpdist (built first).
set -eu
WORK="${1:-/tmp/pulpdist-publish-throughput}"
CORE="${2:-0}"
RUNS=5
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PULPDIST:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -p pulpdist >&2)
fi
PULPDIST="${PULPDIST:-$ROOT/target/release/pulpdist}"
for tool in b3sum casync /usr/bin/time; do
    command -v "$tool" >/dev/null || apt-get install -y "$(basename "$tool")" >/dev/null
done

# Large packages (a few of them may be missing from an apt source: skipped).
PKGS="firefox-esr chromium chromium-common thunderbird golang-1.19-go golang-1.19-src
fonts-noto-cjk libllvm15 libreoffice-core openjdk-17-jre-headless gcc-12 g++-12 cpp-12
libwebkit2gtk-4.1-0 libjavascriptcoregtk-4.1-0 qemu-system-x86 libgtk-3-common"
mkdir -p "$WORK/debs"
cd "$WORK/debs"
for p in $PKGS; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download "$p" >/dev/null 2>&1 || true
done
cd "$WORK"
BYTES=$(cat debs/*.deb | wc -c)
[ "$BYTES" -gt 100000000 ] || { echo "too few .debs downloaded ($BYTES bytes)" >&2; exit 1; }
echo "input: $(ls debs | wc -l) .debs, $BYTES bytes; one core (taskset -c $CORE); commit $(git -C "$ROOT" rev-parse --short HEAD)"
[ -f key ] || "$PULPDIST" keygen key >/dev/null
cat debs/*.deb >/dev/null

# timed NAME CMD...: one line "NAME wall_s cpu_s rss_mb".
timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out taskset -c "$CORE" "$@" >/dev/null
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}
: >results.txt
for _ in $(seq $RUNS); do
    rm -rf store state copy castr out.caidx
    sync
    timed publish "$PULPDIST" publish --store store --tree debs --key key --state state \
        --threads 1 debs >>results.txt
    sync
    timed copy_fsync sh -c 'cp -r debs copy && sync copy/*' >>results.txt
    timed blake3 b3sum --num-threads 1 debs/*.deb >>results.txt
    sync
    timed casync_make casync make --store=castr out.caidx debs >>results.txt
done
rm -rf store state copy castr out.caidx
cat results.txt
median() { grep "^$1 " results.txt | sort -k2 -n | sed -n "$(((RUNS + 1) / 2))p" | awk '{ print $2 }'; }
P=$(median publish)
for n in publish copy_fsync blake3 casync_make; do
    M=$(median $n)
    awk -v n="$n" -v m="$M" -v b="$BYTES" -v p="$P" \
        'BEGIN { printf "median %s %.2f s: %.0f MB/s, %.2f x publish\n", n, m, b / m / 1e6, m / p }'
done
