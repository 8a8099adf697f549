#!/bin/sh
# What a site one version behind fetches, record kind by record kind, for binaries side by
# side: for each binary, publish V1 into a fresh directory store, sync a mirror, publish V2,
# print the delta pack's composition (delta-records.py) and its size, sync again and check
# the mirror against V2 (diff -r). The bytes are deterministic; the publish time is one run
# (the machine is shared).
#
#   benchmarks/delta-records.sh V1 V2 BINARY...
set -eu
V1="$1"; V2="$2"; shift 2
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d /tmp/pulpdist-delta-records.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
"$1" keygen "$WORK/key" >/dev/null
for bin in "$@"; do
    w="$WORK/$(basename "$bin")"
    mkdir -p "$w"
    "$bin" publish --store "$w/store" --tree t --key "$WORK/key" "$V1" -q >/dev/null
    "$bin" sync --store "$w/store" --tree t --trust "$WORK/key.pub" "$w/m" -q >/dev/null
    ls "$w/store/packs" > "$w/before"
    start=$(date +%s.%N)
    "$bin" publish --store "$w/store" --tree t --key "$WORK/key" "$V2" -q >/dev/null
    end=$(date +%s.%N)
    echo "== $bin: publish of V2 $(echo "$end - $start" | bc) s"
    ls "$w/store/packs" | grep -vxF -f "$w/before" | while read -r p; do
        python3 "$HERE/delta-records.py" "$w/store/packs/$p" || [ $? -eq 3 ]
    done
    "$bin" sync --store "$w/store" --tree t --trust "$WORK/key.pub" "$w/m" --json > "$w/sync.json"
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("sync:", {k: j[k] for k in ("bytes_fetched", "requests", "delta_nodes", "delta_files", "delta_failed")})' "$w/sync.json"
    diff -r "$V2" "$w/m" >/dev/null && echo "mirror: same as V2" || { echo "mirror: DIFFERENT from V2"; exit 1; }
done
