"""``make demo``: a real migration on the embedded emulator, start to finish, in well under a minute.

Starts ``imgmig emulate --seed demo`` (four regions on loopback), lists what each region holds, runs
``imgmig run jobs/demo.toml`` (KR1 -> KR2 + KR3 + JP1, with progress and the summary; one source is not
downloadable until imgmig switches NHN's download permission on for it, and back), shows
``imgmig status``, runs the job again to show that everything is now up to date, then stops the
emulator. Everything goes through the real CLI and HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.emulator.process import emulator_process
from pipeline.emulator.seed import DEMO_TENANT

__all__ = ["main"]

JOB = Path("jobs/demo.toml")
#: Where the demo job's journal_dir (relative to the job file) puts its journal.
JOURNAL = (JOB.parent / "../state/demo").resolve()
PORT = 18780
PASSWORD_ENV = "IMGMIG_DEMO_PASSWORD"


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli(*args: str, env: dict[str, str]) -> int:
    print(f"$ imgmig {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "pipeline", *args], env=env)


async def _listing(info: dict[str, object]) -> None:
    regions = info["regions"]
    if not isinstance(regions, dict):
        raise RuntimeError(f"the emulator's info line has no regions: {info}")
    async with new_session() as session:
        auth = PasswordAuth(str(info["identity_url"]), DEMO_TENANT, "demo@example.com", Secret("demo"))
        for region in regions:
            images = [i async for i in ImageClient(session, auth, region).list_images(sort_key="name", sort_dir="asc")]
            print(f"{region}: {len(images)} images visible to the demo tenant")
            for image in images:
                size = f"{(image.size or 0) / (1 << 20):7.1f} MiB" if image.size is not None else "    no data"
                gated = str(image.raw.get("nhncloud_allow_download", "true")).lower() != "true"
                note = "  [nhncloud_allow_download: false]" if gated else ""
                if image.raw.get("kernel_id"):
                    note += f"  [kernel_id {image.raw['kernel_id']}, ramdisk_id {image.raw.get('ramdisk_id')}]"
                if image.raw.get("block_device_mapping"):
                    note += "  [volume-backed: block_device_mapping]"
                print(f"  {image.status:7} {image.visibility or '':8} {size}  {image.name}{note}")


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    port = PORT if all(_port_free(PORT + i) for i in range(5)) else 0
    tmp = Path(tempfile.mkdtemp(prefix="imgmig-demo-"))
    shutil.rmtree(JOURNAL, ignore_errors=True)
    env = {**os.environ, PASSWORD_ENV: "demo-password"}
    args = ("--seed", "demo", "--regions", "KR1,KR2,KR3,JP1", "--port", str(port), "--data-dir", str(tmp / "emulator"))
    try:
        with emulator_process(args) as emu:
            return _demo(emu.info, port, tmp, env, started)
    except RuntimeError as exc:
        print(f"imgmig demo: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _demo(info: dict[str, Any], port: int, tmp: Path, env: dict[str, str], started: float) -> int:
    job = JOB
    _say(f"emulator up: identity {info['identity_url']}, regions {', '.join(info['regions'])}")
    if port == 0:
        # the usual ports are taken: point a copy of the job at the ephemeral ones
        job = tmp / "demo.toml"
        text = JOB.read_text().replace(f"http://127.0.0.1:{PORT}/v2.0", info["identity_url"])
        # the copy lives elsewhere: its journal stays where the job file's relative journal_dir puts it
        job.write_text(text.replace('journal_dir = "../state/demo"', f'journal_dir = "{JOURNAL}"'))
        print(f"(port {PORT} is busy; using {job} with {info['identity_url']})")
    _say("before: what each region holds")
    anyio.run(_listing, info)
    _say("plan")
    _cli("plan", str(job), env=env)
    _say("run: KR1 -> KR2 + KR3 + JP1, one read per image, verified on the fly")
    code = _cli("run", str(job), env=env)
    _say("status")
    _cli("status", str(job), env=env)
    _say("after: what each region holds")
    anyio.run(_listing, info)
    _say("run again: everything is up to date, 0 bytes move")
    again = _cli("run", str(job), "--no-progress", "--log-level", "warning", env=env)
    _say("verify --deep: re-read every copy and hash it")
    verified = _cli("verify", str(job), "--deep", env=env)
    _say(f"demo finished in {time.monotonic() - started:.1f} s (exit codes: run {code}, rerun {again}, "
         f"verify {verified})")  # fmt: skip
    return 0 if code == again == verified == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
