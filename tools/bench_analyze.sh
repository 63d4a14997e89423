#!/usr/bin/env bash
# Benchmarks `dreamd analyze` on a synthetic dreamd.jsonl of SIZE_MB (default 1024) megabytes:
# throughput (MB/s) and peak RSS. Not part of `cargo test`.
# Usage: tools/bench_analyze.sh [SIZE_MB] [--gzip]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb="${1:-1024}"
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet
log="$work/dreamd.jsonl"
python3 tools/gen_analyze_log.py "$log" "$size_mb"
if [ "${2:-}" = "--gzip" ]; then
    gzip -1 "$log"
    log="$log.gz"
fi
bytes=$(stat -c %s "$work/dreamd.jsonl" 2>/dev/null || gzip -l "$log" | awk 'NR==2 {print $2}')
/usr/bin/time -f "%e %M" -o "$work/time" "$target/release/dreamd" analyze "$log" > "$work/report.txt"
read -r seconds rss_kb < "$work/time"
awk -v b="$bytes" -v s="$seconds" -v r="$rss_kb" 'BEGIN {
    printf "input %.0f MB (uncompressed) in %.2f s: %.0f MB/s, peak RSS %.1f MiB\n", b / 1e6, s, b / 1e6 / s, r / 1024
}'
head -3 "$work/report.txt"
