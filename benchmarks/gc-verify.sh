#!/bin/sh
# Issue 17's figure: garbage collection and store checking on a large store, beside restic
# (`forget --prune`, `check`, `check --read-data`) on the same data, in the same run.
#
# The data: a package pool (scenario pool: already-compressed .deb-like files) and four
# more versions, each replacing 5 % of the packages by new ones. PulpDist publishes the five
# versions into a store; restic backs up the same five states into a repository. Then:
#   - verify (structure) and verify --read-data beside restic check and check --read-data,
#     three rounds interleaved;
#   - gc keeping the last two versions (two runs without grace: condemn, then remove), with
#     whole packs only and compacting (--max-unused 5), beside restic forget --keep-last 2
#     --prune (its default --max-unused 5%).
# Prints wall and CPU seconds and peak RSS (MB) of each run, MB/s over the store's size, and
# the bytes each store holds after.
#
#   benchmarks/gc-verify.sh [SCALE] [WORK]   (SCALE 1 = a 400 MB pool; WORK: removed first)
# Binaries: $PULPDIST and $GEN_TREE, or target/release (built first); restic from Debian.
set -eu
SCALE="${1:-1}"
WORK="${2:-/tmp/pulpdist-gc-verify}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benchmarks/binaries.sh"
command -v restic >/dev/null || apt-get install -y restic >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$PULPDIST" keygen key >/dev/null
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$WORK/restic" RESTIC_CACHE_DIR="$WORK/restic-cache"
restic init -q >/dev/null
"$GEN_TREE" scenario pool 1 up "$SCALE" >/dev/null

timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null 2>t.err || { cat t.err >&2; exit 1; }
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}
mb() { du -sm "$1" | awk '{print $1}'; }

: >results.txt
for v in 1 2 3 4 5; do
    if [ "$v" -gt 1 ]; then
        # 5 % of the packages replaced by new ones (new names, new bytes).
        find up -name '*.deb' | sort | awk -v v="$v" 'NR % 20 == v % 20' | while read -r f; do
            size=$(stat -c %s "$f")
            rm "$f"
            head -c "$size" /dev/urandom >"${f%.deb}-v$v.deb"
        done
    fi
    "$PULPDIST" publish --store store --tree pool --key key up --json >/dev/null
    restic backup -q --host bench up >/dev/null
done
echo "store_mb $(mb store) restic_mb $(mb restic)" >>results.txt

for _ in 1 2 3; do
    timed "pulpdist_verify" "$PULPDIST" verify --store store --trust key.pub --progress none >>results.txt
    timed "restic_check" restic check --no-cache >>results.txt
    timed "pulpdist_verify_read_data" "$PULPDIST" verify --store store --trust key.pub --read-data --progress none >>results.txt
    timed "restic_check_read_data" restic check --no-cache --read-data >>results.txt
done

# Without rewriting (whole packs only), on a copy; then compacting (--max-unused 5, as
# restic's default), each as its two runs (condemn, then remove: --grace 0s).
cp -a store store.plain
timed "pulpdist_gc_condemn" "$PULPDIST" gc --store store.plain --keep-last 2 --grace 0s --progress none >>results.txt
timed "pulpdist_gc_remove" "$PULPDIST" gc --store store.plain --keep-last 2 --grace 0s --progress none >>results.txt
"$PULPDIST" gc --store store.plain --keep-last 2 --grace 0s --json --progress none >gc-plain.json
timed "pulpdist_gc_compact_condemn" "$PULPDIST" gc --store store --keep-last 2 --grace 0s --max-unused 5 --key key --progress none >>results.txt
timed "pulpdist_gc_compact_remove" "$PULPDIST" gc --store store --keep-last 2 --grace 0s --progress none >>results.txt
"$PULPDIST" gc --store store --keep-last 2 --grace 0s --json --progress none >gc.json
timed "restic_forget_prune" restic forget -q --keep-last 2 --prune >>results.txt
echo "after_gc store_mb $(mb store) restic_mb $(mb restic)" >>results.txt
python3 - "$WORK/gc-plain.json" "$WORK/gc.json" >>results.txt <<'E'
import json, sys
for name, path in zip(("whole_packs", "compacted"), sys.argv[1:]):
    r = json.load(open(path))
    print("pulpdist_after_gc_%s packs_bytes %d live_bytes %d ratio %.3f" % (
        name, r["bytes_after"], r["live_bytes"], r["bytes_after"] / r["live_bytes"]))
E
cat results.txt
