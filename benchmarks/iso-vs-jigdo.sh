#!/usr/bin/env bash
# ISO images: PulpDist beside jigdo-file on the same image, built by xorriso from a
# generated package pool. Prints a markdown table (sizes in bytes, times in seconds, peak
# memory in KiB). Not part of the test command.
#   benchmarks/iso-vs-jigdo.sh [SCALE]   (default 40: about 80 MB of packages)
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-40}"
need=()
command -v jigdo-file >/dev/null 2>&1 || need+=(jigdo-file)
command -v xorriso >/dev/null 2>&1 || need+=(xorriso)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --locked --quiet -p pulpdist -p pulpdist-benchmarks --bin pulpdist --bin gen-tree
P="$PWD/target/release/pulpdist"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
cd "$W"
"$OLDPWD/target/release/gen-tree" tree 7 "$scale"
xorriso -as mkisofs -R -J -quiet -o img.iso tree/pool
size=$(stat -c %s img.iso)
t() { /usr/bin/time -f "%e %M" -o "$1" "${@:2}" >/dev/null 2>&1; }

# Templates.
t jt.time jigdo-file make-template --force --image=img.iso --jigdo=img.jigdo --template=img.template tree/pool//
t pt.time "$P" iso template img.iso --out img.tpl
jsize=$(( $(stat -c %s img.template) + $(stat -c %s img.jigdo) ))
psize=$(stat -c %s img.tpl)
# Rebuilds from the loose files.
t jr.time jigdo-file make-image --force --image=j.iso --jigdo=img.jigdo --template=img.template tree/pool//
t pr.time "$P" iso rebuild img.tpl --from tree/pool --out p.iso
cmp -s j.iso img.iso && cmp -s p.iso img.iso || { echo "a rebuilt image differs" >&2; exit 1; }
# A mirror that has the tree syncs the next version, which adds the image.
"$P" keygen k >/dev/null
"$P" publish --store store --tree t --key k --json tree >/dev/null
"$P" sync --store store --tree t --trust k.pub --json mirror >/dev/null
mkdir -p tree/cdimage && cp img.iso tree/cdimage/
"$P" publish --store store --tree t --key k --json tree >/dev/null
fetched=$("$P" sync --store store --tree t --trust k.pub --json mirror | sed -n 's/.*"bytes_fetched":\([0-9]*\).*/\1/p')

read -r jte jtm < jt.time; read -r pte ptm < pt.time
read -r jre jrm < jr.time; read -r pre prm < pr.time
echo "image: $size bytes (xorriso -R -J of a generated pool, scale $scale)"
echo
echo "| | jigdo-file | PulpDist | PulpDist / jigdo |"
echo "|---|---|---|---|"
echo "| template (jigdo: .template + .jigdo) bytes | $jsize | $psize | $(awk "BEGIN{printf \"%.2f\", $psize/$jsize}") |"
echo "| bytes a site with the files fetches for the image | $jsize (template) | $fetched (sync) | $(awk "BEGIN{printf \"%.2f\", $fetched/$jsize}") |"
echo "| make template: s / peak KiB | $jte / $jtm | $pte / $ptm | $(awk "BEGIN{printf \"%.2f\", ($pte+0.001)/($jte+0.001)}") |"
echo "| rebuild from files: s / peak KiB | $jre / $jrm | $pre / $prm | $(awk "BEGIN{printf \"%.2f\", ($pre+0.001)/($jre+0.001)}") |"
