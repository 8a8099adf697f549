#!/bin/sh
# Issue 2's scale figure: publish of a tree of 1,000,000 files (scenario large) beside a
# plain stat walk of the same tree, in the same run; then the publish of version 2
# (1,000 files changed). Prints wall and CPU seconds and peak RSS of each, and the ratios.
#
#   benchmarks/publish-scale.sh [SCALE] [WORK]     (SCALE 1 = 1,000,000 files; WORK: a
#                                                    scratch directory, removed first)
# Binaries: $PULPDIST and $GEN_TREE, or target/release (built first).
set -eu
SCALE="${1:-1}"
WORK="${2:-/tmp/pulpdist-publish-scale}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PULPDIST:-}" ] || [ -z "${GEN_TREE:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -p pulpdist -p pulpdist-benchmarks >&2)
fi
PULPDIST="${PULPDIST:-$ROOT/target/release/pulpdist}"
GEN_TREE="${GEN_TREE:-$ROOT/target/release/gen-tree}"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$PULPDIST" keygen key >/dev/null
"$GEN_TREE" scenario large 1 up "$SCALE" >/dev/null

# timed NAME CMD...: one line "NAME wall_s cpu_s rss_mb".
timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}
publish() {
    "$PULPDIST" publish --store store --tree large --key key up --json
}
walk() {
    find up -printf '%s %T@\n'
}

timed "publish_v1" publish >results.txt
# Three rounds of each, interleaved: the machine is shared and noisy.
for _ in 1 2 3; do
    timed "publish_unchanged" publish >>results.txt
    timed "stat_walk" walk >>results.txt
done
"$GEN_TREE" scenario large 2 up "$SCALE" >/dev/null
timed "stat_walk_v2" walk >>results.txt
timed "publish_v2" publish >>results.txt
timed "publish_v2_unchanged" publish >>results.txt

cat results.txt
awk '
    { wall[$1] = ($1 in wall && wall[$1] < $2) ? wall[$1] : $2 }
    END {
        printf "best of 3: publish unchanged %.2f s, stat walk %.2f s: %.2fx\n",
            wall["publish_unchanged"], wall["stat_walk"], wall["publish_unchanged"] / wall["stat_walk"]
        printf "publish of v2 (1,000 changed, deltas included): %.2f s: %.2fx the stat walk\n",
            wall["publish_v2"], wall["publish_v2"] / wall["stat_walk_v2"]
    }' results.txt
