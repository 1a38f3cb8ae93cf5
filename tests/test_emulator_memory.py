"""The emulator streams image data: a 2 GiB upload and download grow its memory by less than 100 MiB."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.emulator.synthetic import synthetic_chunks

from .procs import emulator_process, rss_peak_kib

GiB = 1 << 30


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_two_gib_round_trip_keeps_emulator_memory_flat(tmp_path: Path) -> None:
    """Upload then download 2 GiB through `imgmig emulate`; its peak RSS grows by < 100 MiB."""
    size = 2 * GiB
    with emulator_process("--regions", "KR1", "--data-dir", str(tmp_path)) as emu:
        async with new_session() as session:
            client = ImageClient(session, PasswordAuth(emu.identity_url, "t" * 32, "u", Secret("p")), "KR1")
            fields = {"name": "big", "os_type": "linux", "disk_format": "raw", "container_format": "bare"}

            async def body(n: int, md5: hashlib._Hash) -> AsyncIterator[bytes]:
                for chunk in synthetic_chunks("mem", n):
                    md5.update(chunk)
                    yield chunk

            warm = await client.create_image(fields)  # load every code path before the baseline
            await client.upload_image(warm.id, body(8 << 20, hashlib.md5()), size=8 << 20)
            _, baseline = rss_peak_kib(emu.proc.pid)

            sent = hashlib.md5()
            img = await client.create_image(fields)
            await client.upload_image(img.id, body(size, sent), size=size)
            stored = await client.get_image(img.id)
            assert stored.size == size
            assert stored.checksum == sent.hexdigest()

            received, got = hashlib.md5(), 0
            async with client.open_download(img.id) as dl:
                async for chunk in dl.iter_chunks(1 << 20):
                    received.update(chunk)
                    got += len(chunk)
            assert got == size
            assert received.hexdigest() == sent.hexdigest()
            _, peak = rss_peak_kib(emu.proc.pid)
    growth_mib = (peak - baseline) / 1024
    print(f"emulator peak RSS {peak / 1024:.1f} MiB, baseline {baseline / 1024:.1f} MiB, "  # noqa: T201 - the figure
          f"growth {growth_mib:.1f} MiB")  # fmt: skip
    assert growth_mib < 100
