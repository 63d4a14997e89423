#!/usr/bin/env python3
"""Writes a synthetic dreamd.jsonl of about SIZE_MB megabytes for benchmarking `dreamd analyze`.

Usage: tools/gen_analyze_log.py OUT SIZE_MB

Events in dreamd's real proportions and shapes (README, "dreamd.jsonl events"): per pair one
keyframe and one pair event, some late display ticks, and buffer/display_stats every 5 s, plus an
unknown event and an unparseable line now and then. Deterministic (fixed seed).
"""
import datetime
import random
import sys


def main():
    out, size_mb = sys.argv[1], float(sys.argv[2])
    limit = int(size_mb * 1_000_000)
    rng = random.Random(7)
    t = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    written = 0
    pair = 0
    displayed = 0
    next_status = t
    with open(out, "w", buffering=1 << 20) as f:
        while written < limit:
            lines = []
            stamp = lambda: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            ts = stamp()
            kf = rng.uniform(1.0, 6.0)
            lines.append(
                f'{{"timestamp":"{ts}","level":"INFO","message":"keyframe {pair + 1} from procedural in {kf:.1f} ms",'
                f'"event":"keyframe","index":{pair + 1},"seq":{(pair + 1) * 11},"source":"procedural","ms":{kf:.3f},'
                f'"outcome":"ok","target":"dreamd::event"}}')
            decode = rng.uniform(0.3, 1.5)
            save = rng.uniform(30, 120)
            wait = 0.0 if rng.random() < 0.97 else rng.uniform(0.5, 5.0)
            total = decode + save + 2.0
            lines.append(
                f'{{"timestamp":"{ts}","level":"INFO","message":"pair {pair}->{pair + 1} done: 11 frames in {total:.0f} ms",'
                f'"event":"pair","from":{pair},"to":{pair + 1},"first_seq":{pair * 11 + 1},"last_seq":{pair * 11 + 11},'
                f'"frames":11,"frames_ready":11,"batch_size":10,"slerp_ms":0.120,"decode_ms":{decode:.3f},'
                f'"decode_ms_per_frame":{decode / 11:.4f},"resize_ms":0.4,"save_ms":{save:.3f},"total_ms":{total:.3f},'
                f'"lock_wait_ms":{wait:.3f},"lock_hold_ms":{decode:.3f},"lock_acquisitions":1,"write_failures":0,'
                f'"outcome":"ok","error":"","target":"dreamd::event"}}')
            if rng.random() < 0.3:
                late = rng.uniform(2.0, 9.0)
                lines.append(
                    f'{{"timestamp":"{ts}","level":"INFO","message":"display tick {late:.1f} ms late",'
                    f'"event":"display","kind":"late","late_ms":{late:.3f},"target":"dreamd::event"}}')
            if t >= next_status:
                next_status += 5.0
                displayed += 20
                lines.append(
                    f'{{"timestamp":"{ts}","level":"DEBUG","message":"buffer 29.5s","event":"buffer",'
                    f'"seconds":{rng.uniform(25, 32):.2f},"target_seconds":30.0,"frames_ready":118,"frames_registered":130,'
                    f'"target":"dreamd::event"}}')
                lines.append(
                    f'{{"timestamp":"{ts}","level":"DEBUG","message":"display 4.00 fps","event":"display_stats",'
                    f'"target_fps":4.0,"frames_displayed":{displayed},"actual_fps":4.0,"interval_error_p50_ms":0.5,'
                    f'"interval_error_p99_ms":{rng.uniform(1, 8):.3f},"late":0,"held":0,"skipped":0,"target":"dreamd::event"}}')
            if pair % 1000 == 999:
                lines.append(f'{{"timestamp":"{ts}","event":"something_new","x":1}}')
                lines.append('{"timestamp":"2024-01-01T00:00:00Z","event":"pa')
            chunk = "\n".join(lines) + "\n"
            f.write(chunk)
            written += len(chunk)
            pair += 1
            t += 2.75


if __name__ == "__main__":
    main()
