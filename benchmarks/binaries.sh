# Sourced by the harness scripts, with ROOT set to the repository: the binaries they
# measure, $PULPDIST and $GEN_TREE, or target/release (built first); GNU time, and
# timed NAME CMD...: one line "NAME wall_s cpu_s rss_mb" (run in the working directory).
if [ -z "${PULPDIST:-}" ] || [ -z "${GEN_TREE:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -p pulpdist -p pulpdist-benchmarks >&2)
fi
PULPDIST="${PULPDIST:-$ROOT/target/release/pulpdist}"
GEN_TREE="${GEN_TREE:-$ROOT/target/release/gen-tree}"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null

timed() {
    name="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o t.out "$@" >/dev/null
    awk -v n="$name" '{ printf "%s %.2f %.2f %.0f\n", n, $1, $2 + $3, $4 / 1024 }' t.out
}
