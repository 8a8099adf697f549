#!/bin/sh
# Issue 2's scale figure: publish of a tree of 1,000,000 files (scenario large) beside a
# plain stat walk of the same tree, in the same run; then the publish of version 2
# (1,000 files changed, deltas included). Prints wall and CPU seconds and peak RSS (MB) of
# each run, and the ratios of the best of three.
#
#   benchmarks/publish-scale.sh [SCALE] [WORK]     (SCALE 1 = 1,000,000 files; WORK: a
#                                                    scratch directory, removed first)
# Binaries: $PULPDIST and $GEN_TREE, or target/release (built first).
set -eu
SCALE="${1:-1}"
WORK="${2:-/tmp/pulpdist-publish-scale}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benchmarks/binaries.sh"

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$PULPDIST" keygen key >/dev/null
"$GEN_TREE" scenario large 1 up "$SCALE" >/dev/null
PUBLISH="$PULPDIST publish --store store --tree large --key key up --json"
WALK="find up -printf %s_%T@\n"

timed "publish_v1" $PUBLISH >results.txt
# Three rounds of each, interleaved: the machine is shared and noisy.
for _ in 1 2 3; do
    timed "publish_unchanged" $PUBLISH >>results.txt
    timed "stat_walk" $WALK >>results.txt
done
"$GEN_TREE" scenario large 2 up "$SCALE" >/dev/null
# Version 2 three times, from the same store and publisher state each time.
cp -a store store.v1
cp -a .store.pulpdist-publish state.v1
sync
for i in 1 2 3; do
    if [ "$i" -gt 1 ]; then
        rm -rf store .store.pulpdist-publish
        cp -a store.v1 store
        cp -a state.v1 .store.pulpdist-publish
    fi
    sync # the copies' writeback is not the publish's
    sleep 2
    timed "stat_walk_v2" $WALK >>results.txt
    timed "publish_v2" $PUBLISH >>results.txt
done
timed "publish_v2_unchanged" $PUBLISH >>results.txt

cat results.txt
awk '
    !($1 in wall) || $2 < wall[$1] { wall[$1] = $2; rss[$1] = $4 }
    END {
        printf "best of 3: publish of the unchanged tree %.2f s (peak RSS %d MB), stat walk %.2f s: %.2fx\n",
            wall["publish_unchanged"], rss["publish_unchanged"], wall["stat_walk"],
            wall["publish_unchanged"] / wall["stat_walk"]
        printf "best of 3: publish of v2 (deltas included) %.2f s (peak RSS %d MB), stat walk %.2f s: %.2fx\n",
            wall["publish_v2"], rss["publish_v2"], wall["stat_walk_v2"],
            wall["publish_v2"] / wall["stat_walk_v2"]
    }' results.txt
