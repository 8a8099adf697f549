#!/bin/sh
# Issue 20's many-small-files case: a first sync of 200,000 files of 200 B to 3 kB in 200
# directories from a directory store, beside `rsync -a` of the same tree on the same disk
# (rsync flushes nothing; `rsync -a` then `sync` is given too), three rounds interleaved;
# then an update (one file per directory). Prints wall and CPU seconds and peak RSS (MB)
# of each run and the ratios of the medians.
#
# Every run writes a directory of its own, and nothing is deleted in the 35 s before the
# runs: on ext4 without a journal (this machine kind's root filesystem) an inode freed
# less than `dirty_expire_centisecs` (30 s) ago, in an inode table block not yet written
# back, is skipped when a file is created (`recently_deleted`), and a run right after
# `rm -rf` of 200,000 files spent two thirds of its system time skipping them (perf:
# `ext4_create` -> `recently_deleted`). Deleting each run's output before the next run
# made whichever tool ran first after a deletion pay for it.
#
# With FRESH_FS=1, each run writes into an ext4 filesystem of its own (without a journal,
# as this machine kind's root), made on a loop device just before the run: no run inherits
# another's freed inodes, dirty blocks or directory layout.
#
#   benchmarks/small-files.sh [FILES] [DIRS] [WORK]
# Binaries: $PULPDIST and $GEN_TREE, or target/release (built first).
set -eu
FILES="${1:-200000}"
DIRS="${2:-200}"
WORK="${3:-/tmp/pulpdist-small-files}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benchmarks/binaries.sh"
command -v rsync >/dev/null || apt-get install -y rsync >/dev/null

# Filesystems a run that stopped early left mounted.
for f in "$WORK"/*.fs; do
    if mountpoint -q "$f" 2>/dev/null; then umount "$f"; fi
done
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
"$PULPDIST" keygen key >/dev/null
"$GEN_TREE" small up "$FILES" "$DIRS" 1
"$PULPDIST" publish --store store --tree small --key key up >/dev/null
sync
# Inodes freed by the rm -rf above (an earlier run's) are no longer "recently deleted".
sleep 35

# dest NAME: where a run writes NAME (a fresh filesystem's, with FRESH_FS=1).
dest() {
    if [ "${FRESH_FS:-}" != 1 ]; then
        echo "$1"
        return
    fi
    truncate -s 4G "$1.img"
    mkfs.ext4 -q -F -O ^has_journal "$1.img"
    mkdir -p "$1.fs"
    mount -o loop "$1.img" "$1.fs"
    echo "$1.fs/$1"
}
timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}
: >results.txt
for i in 1 2 3; do
    m=$(dest "mirror$i")
    [ "$i" = 1 ] && mirror1="$m"
    timed "pulpdist_first_sync" "$PULPDIST" sync --store store --tree small --trust key.pub "$m" >>results.txt
    sync
    c=$(dest "copy$i")
    [ "$i" = 1 ] && copy1="$c"
    timed "rsync_a" rsync -a up/ "$c/" >>results.txt
    sync
    c=$(dest "synced$i")
    timed "rsync_a_then_sync" sh -c "rsync -a up/ $c/ && sync" >>results.txt
    sync
done
"$GEN_TREE" small up "$FILES" "$DIRS" 2
"$PULPDIST" publish --store store --tree small --key key up >/dev/null
sync
timed "pulpdist_update" "$PULPDIST" sync --store store --tree small --trust key.pub "$mirror1" >>results.txt
timed "rsync_a_update" rsync -a up/ "$copy1/" >>results.txt
diff -r up "$mirror1" >/dev/null && echo "mirror identical to the source"
if [ "${FRESH_FS:-}" = 1 ]; then
    for f in *.fs; do umount "$f"; done
    rm -f ./*.img
fi
cat results.txt
# Medians of the three rounds (the second of three, sorted), and the ratios.
median() { grep "^$1 " results.txt | sort -k2 -n | sed -n 2p | awk '{ print $2 }'; }
peak() { grep "^$1 " results.txt | sort -k4 -n | tail -n 1 | awk '{ print $4 }'; }
P=$(median pulpdist_first_sync)
R=$(median rsync_a)
RS=$(median rsync_a_then_sync)
echo "median first sync: pulpdist $P s (peak RSS $(peak pulpdist_first_sync) MB), rsync -a $R s, rsync -a + sync $RS s"
awk -v p="$P" -v r="$R" -v rs="$RS" 'BEGIN { printf "pulpdist first sync / rsync -a: %.2f; / rsync -a + sync: %.2f\n", p / r, p / rs }'
