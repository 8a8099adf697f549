#!/bin/sh
# Issue 20, item 6: an unchanged publish beside a stat walk, both pinned to one core
# (`taskset -c 0`; the publish with --threads 1), scenario large at SCALE (0.2: 200,000
# files in 200 directories), RUNS alternating runs of each after one publish of the tree.
# Prints wall and CPU seconds and peak RSS (MB) of each run, the medians and their ratio.
#
#   benchmarks/unchanged-one-core.sh [SCALE] [RUNS] [WORK]
# Binaries: $PULPDIST and $GEN_TREE, or target/release (built first).
set -eu
SCALE="${1:-0.2}"
RUNS="${2:-7}"
WORK="${3:-/tmp/pulpdist-one-core}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benchmarks/binaries.sh"
command -v taskset >/dev/null || apt-get install -y util-linux >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$PULPDIST" keygen key >/dev/null
"$GEN_TREE" scenario large 1 up "$SCALE" >/dev/null
PUBLISH="taskset -c 0 $PULPDIST publish --store store --tree large --key key --threads 1 up --json"
WALK="taskset -c 0 find up -printf %s_%T@\n"
$PUBLISH >first.json
$PUBLISH >second.json
grep -q '"unchanged": *true' second.json || {
    echo "the second publish was not found unchanged: $(cat second.json)" >&2
    exit 1
}
: >results.txt
for _ in $(seq "$RUNS"); do
    timed publish_unchanged $PUBLISH >>results.txt
    timed stat_walk $WALK >>results.txt
done
cat results.txt
median() {
    grep "^$1 " results.txt | sort -k2 -n | sed -n "$(((RUNS + 1) / 2))p" | awk '{ print $2 }'
}
p=$(median publish_unchanged)
w=$(median stat_walk)
echo "medians: unchanged publish $p s, stat walk $w s: $(echo "$p $w" | awk '{ printf "%.2f", $1 / $2 }')x"
