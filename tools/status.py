#!/usr/bin/env python3
"""Print a one-screen summary of a running dreamd's status.json.

Usage: tools/status.py [OUTPUT_DIR] [--watch SECONDS]

Reads OUTPUT_DIR/status.json (default: output/status.json), which dreamd replaces atomically, so
a read never sees a partial document. With --watch it reprints every SECONDS until Ctrl-C.
Exit status 1 when the file is missing or does not parse.
"""
import json
import sys
import time
from pathlib import Path


def summary(doc: dict) -> str:
    d, b, g, lock = doc["display"], doc["buffer"], doc["generation"], doc["gpu_lock"]
    lines = [
        f"state      {doc['state']}  (pid {doc['pid']}, up {doc['uptime_s'] / 60:.1f} min)",
        f"display    seq {d['current_sequence']}  {d['actual_fps']:.2f}/{d['target_fps']} fps"
        f"  shown {d['frames_displayed']}  late {d['late']}  held {d['held']}  skipped {d['skipped']}"
        f"  p99 interval error {d['interval_error_p99_ms']:.2f} ms",
        f"buffer     {b['seconds']:.1f}/{b['target_seconds']} s ({b['percentage']:.0f} %)"
        f"  ready {b['frames_ready']}",
        f"generation {g['keyframes']} keyframes, {g['interpolated_frames']} in-betweens"
        f"  source {g['source']}  decoder {g['decoder']} on {g['device']}"
        f"  decode {g['decode_ms_per_frame'] or 0:.2f} ms/frame",
        f"gpu lock   {lock['acquisitions']} acquisitions  avg wait {lock['avg_wait_ms']:.3f} ms"
        f"  max {lock['max_wait_ms']:.3f} ms  contention {lock['contention_events']}",
    ]
    failures = {k: v for k, v in doc["failures"].items() if v}
    if failures:
        lines.append("failures   " + ", ".join(f"{k} {v}" for k, v in failures.items()))
    if doc.get("last_error"):
        e = doc["last_error"]
        lines.append(f"last error {e['at']} [{e['stage']}] {e['message']}")
    return "\n".join(lines)


def main(argv: list) -> int:
    watch = None
    if "--watch" in argv:
        i = argv.index("--watch")
        watch = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    path = Path(argv[0] if argv else "output") / "status.json"
    while True:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"cannot read {path}: {e}", file=sys.stderr)
            return 1
        print(summary(doc), flush=True)
        if watch is None:
            return 0
        time.sleep(watch)
        print()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
