#!/bin/sh
# Two publisher builds side by side on the same two versions of a tree: version 1 published
# into a fresh store, then version 2 (`rsync -a --delete` over the source, as a mirror is
# updated; deltas included), with build A and build B alternately for RUNS rounds. Prints
# wall and CPU seconds and peak RSS (MB) of each publish and the medians. Then checks that
# build B wrote the same store bytes in each round's fresh store (two threads) and in one
# more on one thread (packs are named by their content: FORMAT.md 3), heads included
# (`--created`).
#
#   benchmarks/publish-ab.sh A B V1 V2 [RUNS] [WORK]
#     A, B: pulpdist binaries; V1, V2: the two versions (directories); RUNS: default 3;
#     WORK: a scratch directory on the disk to measure (removed first).
set -eu
A="$1"
B="$2"
V1="$3"
V2="$4"
RUNS="${5:-3}"
[ "$RUNS" -ge 1 ] || { echo "RUNS: at least 1" >&2; exit 2; }
WORK="${6:-/tmp/pulpdist-publish-ab}"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
command -v rsync >/dev/null || apt-get install -y rsync >/dev/null
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$B" keygen key >/dev/null
CREATED=$(($(date +%s) - 60))

timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}

# both LABEL BIN STORE THREADS: version 1, then version 2, into a fresh STORE.
both() {
    label="$1" bin="$2" store="$3" threads="$4"
    rm -rf up "$store" ".$store.pulpdist-publish"
    cp -a "$V1" up
    sync
    set -- "$bin" publish --store "$store" --tree t --key key --threads "$threads"
    # (A build from before --created: its heads carry the time they are written.)
    if "$bin" publish --help | grep -q -- --created; then
        set -- "$@" --created "$CREATED"
    fi
    set -- "$@" up
    timed "${label}_v1" "$@" >>results.txt
    rsync -a --delete "$V2/" up/
    sync
    timed "${label}_v2" "$@" >>results.txt
}

: >results.txt
for i in $(seq "$RUNS"); do
    both a "$A" store 2
    both b "$B" store 2
    mv store "store.b$i"
done
cat results.txt
median() {
    n=$(grep -c "^$1 " results.txt)
    grep "^$1 " results.txt | sort -k2 -n | sed -n "$(((n + 1) / 2))p" | awk '{ print $2, $3, $4 }'
}
for v in v1 v2; do
    echo "median $v (wall s, CPU s, peak RSS MB): A $(median "a_$v"), B $(median "b_$v")"
done
# Build B's stores of every round, on two threads, and one more on one thread: each a
# fresh store, so the same bytes (packs, heads, archived heads) in all of them.
both b1 "$B" store 1
same=0
for other in store.b*; do
    if diff -r -x locks -x tmp "$other" store >/dev/null; then
        same=$((same + 1))
    else
        echo "B: $other differs from the store published on one thread"
        diff -rq -x locks -x tmp "$other" store | head
    fi
done
echo "B: $same of $RUNS fresh stores published on two threads are the store published on one, byte for byte ($(ls store/packs | wc -l) packs)"
[ "$same" -eq "$RUNS" ]
