"""``make bench`` / ``python -m bench``: every figure the issues ask for, printed side by side.

Environment knobs (for a quicker look): IMGMIG_BENCH_SIZE_MIB (default 1024 for (a)), IMGMIG_BENCH_WAN_MIB
(default 512 for (b)), IMGMIG_BENCH_BIG_MIB (default 4096 for (c)), IMGMIG_BENCH_IMAGES (default
"1000,10000" for (d)), IMGMIG_BENCH_ONLY (e.g. "a,c").
"""

from __future__ import annotations

import json
import os
import sys
import time

from .journal_cost import bench_journal
from .transfer import bench_memory, bench_relay_ratio, bench_wan

MiB = 1 << 20


def main() -> int:
    only = set(os.environ.get("IMGMIG_BENCH_ONLY", "a,b,c,d").split(","))
    size = int(os.environ.get("IMGMIG_BENCH_SIZE_MIB", "1024")) * MiB
    wan = int(os.environ.get("IMGMIG_BENCH_WAN_MIB", "512")) * MiB
    big = int(os.environ.get("IMGMIG_BENCH_BIG_MIB", "4096")) * MiB
    images = [int(n) for n in os.environ.get("IMGMIG_BENCH_IMAGES", "1000,10000").split(",")]
    results: dict[str, object] = {}
    ok = True
    start = time.perf_counter()
    print(f"imgmig bench on {os.cpu_count()} cores; emulator regions on 127.0.0.1 in a separate process\n")
    if "a" in only:
        a = bench_relay_ratio(size)
        results["a_engine_vs_relay"] = a
        print(f"(a) engine vs minimal relay reference, {size // MiB} MiB synthetic image (target ratio >= 0.9)")
        for key, row in a.items():
            if "on_the_loop" in key:
                print(
                    f"    {key}: engine {row['engine_mib_s']:.0f} MiB/s ({row['vs_threaded']:.2f}x of threaded hashing)"
                )
                continue
            print(
                f"    {key}: reference {row['reference_mib_s']:.0f} MiB/s, engine {row['engine_mib_s']:.0f} MiB/s, "
                f"ratio {row['ratio']:.2f}"
            )
            ok &= row["ratio"] >= 0.9
    if "b" in only:
        b = bench_wan(wan)
        results["b_wan"] = b
        print(f"(b) WAN-like links (40 MiB/s per connection, 20 ms), {wan // MiB} MiB to 3 targets (target >= 3.0x)")
        print(
            f"    engine {b['engine_s']:.1f} s, download-then-upload-each {b['sequential_s']:.1f} s, "
            f"speedup {b['speedup']:.2f}x"
        )
        ok &= b["speedup"] >= 3.0
    if "c" in only:
        c = bench_memory([256 * MiB, big])
        results["c_memory"] = c
        small, large = c[str(256 * MiB)], c[str(big)]
        print("(c) peak RSS of the engine process, 3 targets (target <= 150 MiB and <= 1.2x the 256 MiB figure)")
        print(
            f"    256 MiB image: {small['peak_rss_mib']:.1f} MiB; "
            f"{big // MiB} MiB image: {large['peak_rss_mib']:.1f} MiB; "
            f"ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f}"
        )
        ok &= large["peak_rss_mib"] <= 150 and large["peak_rss_mib"] <= 1.2 * small["peak_rss_mib"]
    if "d" in only:
        d = bench_journal(images)
        results["d_journal"] = d
        print("(d) journal cost in a real job of N 1 KiB images x 3 targets (target < 5% of the job, flat per record)")
        for row in d.values():
            print(
                f"    {row['images']:>6} images: job {row['wall_s']:.1f} s, journal {row['journal_s']:.2f} s "
                f"({100 * row['journal_share']:.1f}%), {row['journal_records']} records, "
                f"{row['us_per_record']:.1f} us/record"
            )
            ok &= row["journal_share"] < 0.05
    print(f"\nbench finished in {time.perf_counter() - start:.0f} s; all targets met: {ok}")
    print(json.dumps(results, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
