"""Run one engine copy in a fresh process and print its peak RSS (used by bench (c))."""

from __future__ import annotations

import json
import sys
import time

import anyio

from pipeline.models import Image

from .common import Emu, peak_rss_mib
from .transfer import engine_copy


def main() -> None:
    identity_url, regions, image_doc = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    emu = Emu(proc=None, info={"identity_url": identity_url, "regions": regions})  # type: ignore[arg-type]
    image = Image.from_api(image_doc)
    baseline = peak_rss_mib()
    start = time.perf_counter()
    seconds = anyio.run(engine_copy, emu, image, ["T1", "T2", "T3"])
    print(
        json.dumps(
            {
                "size": image.size,
                "seconds": seconds,
                "wall": time.perf_counter() - start,
                "peak_rss_mib": peak_rss_mib(),
                "baseline_rss_mib": baseline,
            }
        )
    )


if __name__ == "__main__":
    main()
