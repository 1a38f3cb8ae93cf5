"""(e) Many small images: N images of 1-4 MiB (default 200) to 2 targets through emulator regions with 30 ms
of latency per request (and with none), imgmig against

* a concurrent relay with the same concurrency that lists the source, creates each copy, pipes one GET
  of the source file to both PUTs and verifies each copy (status active, checksum equal to the source's):
  no metadata, no journal, no retries, no client-side hashing (the target's checksum is the check); and
* the sequential practice: openstacksdk, one image and one target at a time (download the image, create
  and upload it in the target with ``create_image``, which checks the checksum the target reports).

Every round copies into a fresh target tenant (and imgmig under a fresh job name), so no round sees
another's copies; the targets keep digests but no bytes (``discard_uploads``), which costs every
contender the same. Also measured: imgmig's requests per image x target for a copy and per image for an
idle rerun of the same job, and imgmig's wall time at 30 ms for several ``images_in_flight`` values (data
for choosing that default), and, to show where imgmig's time goes, the CPU seconds each run costs (this
process and the emulator's) and a variant of the relay that also hashes what it relays (md5 + sha512, as
imgmig does; a diagnostic, not the reference).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import anyio

from pipeline.cloud import PasswordAuth, Secret, new_session
from pipeline.cloud.transport import TransportConfig
from pipeline.config import parse_job
from pipeline.config.values import DEFAULT_CONNECTIONS_PER_REGION
from pipeline.report.summary import RunSummary
from pipeline.run.runner import RunControls, run_job

from .common import BENCH_TENANT, Emu, admin_post, emulator

MiB = 1 << 20
TARGETS = ("T1", "T2")
#: The concurrency imgmig and the relay share in the head-to-head rounds.
IN_FLIGHT = 8
#: Connections per region for imgmig and the relay (imgmig's default).
CONNECTIONS = DEFAULT_CONNECTIONS_PER_REGION
SWEEP = (4, 8, 16, 32)
#: Request kinds that belong to the copy in a target (not listing, schemas or the download).
COPY_KINDS = ("create", "upload", "get", "patch", "tags", "members")
#: Fields of a relay copy: what the emulator (like NHN) needs to create an image, nothing more.
RELAY_FIELDS = {"os_type": "linux", "disk_format": "raw", "container_format": "bare"}


def make_sources(emu: Emu, count: int) -> list[dict[str, Any]]:
    """``count`` synthetic source images, 1-4 MiB (deterministic sizes), with properties and tags."""
    rng = random.Random(20240607)
    images = []
    for i in range(count):
        fields = {
            "name": f"small-{i:04d}", "os_type": "linux", "disk_format": "raw", "container_format": "bare",
            "os_distro": "ubuntu", "app": "bench", "build": f"b{i % 7}", "tags": ["bench", f"group-{i % 4}"],
        }  # fmt: skip
        doc = {"owner": BENCH_TENANT, "size": rng.randint(MiB, 4 * MiB), "seed": f"small-{i}", "fields": fields}
        images.append(admin_post(emu, "regions/SRC/synthetic", doc))
    return images


def set_latency(emu: Emu, seconds: float) -> None:
    """``seconds`` before every request in each region; the targets hash uploads but keep no bytes."""
    for region in ("SRC", *TARGETS):
        admin_post(emu, f"faults/{region}", {"latency": seconds, "discard_uploads": region != "SRC"})


# === imgmig


def imgmig_job(emu: Emu, state: Path, name: str, tenant: str, in_flight: int, connections: int) -> Any:
    """A job SRC -> T1 + T2: the source in the bench tenant, the targets in ``tenant``."""

    def profile(t: str) -> dict[str, str]:
        return {"identity_url": emu.identity_url, "tenant_id": t, "username": "bench", "password_env": "PW"}

    doc = {
        "name": name, "auth": {"src": profile(BENCH_TENANT), "dst": profile(tenant)},
        "source": {"auth": "src", "region": "SRC"}, "targets": [{"auth": "dst", "region": r} for r in TARGETS],
        "transfer": {"images_in_flight": in_flight, "connections_per_region": connections},
        "run": {"journal_dir": str(state)},
    }  # fmt: skip
    return parse_job(doc, "bench", {"PW": "bench"})


def cpu_seconds(emu: Emu) -> tuple[float, float]:
    """CPU time used so far by this process (all threads) and by the emulator process."""
    stat = Path(f"/proc/{emu.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return time.process_time(), (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def measured(emu: Emu, out: dict[str, Any], start: tuple[float, float]) -> None:
    """Add the CPU seconds spent since ``start`` (client side and emulator) to ``out``."""
    client, server = cpu_seconds(emu)
    out["client_cpu_s"], out["emulator_cpu_s"] = client - start[0], server - start[1]


def run_imgmig(spec: Any, *, inspect: bool = True) -> tuple[float, RunSummary]:
    start = time.perf_counter()
    summary = anyio.run(lambda: run_job(spec, RunControls(signals=(), inspect=inspect)))
    return time.perf_counter() - start, summary


def imgmig_round(emu: Emu, state: Path, count: int, *, in_flight: int = IN_FLIGHT, connections: int = CONNECTIONS,
                 rerun: bool = False, inspect: bool = True) -> dict[str, Any]:  # fmt: skip
    """One real job into a fresh tenant; with ``rerun``, the same job again (nothing left to do); ``inspect``
    False: without the format inspection (what it costs)."""
    name = f"small-{uuid.uuid4().hex[:8]}"
    spec = imgmig_job(emu, state / name, name, uuid.uuid4().hex, in_flight, connections)
    cpu = cpu_seconds(emu)
    wall, summary = run_imgmig(spec, inspect=inspect)
    assert summary.exit_code == 0, summary.render()
    assert summary.counts()["copied"] == count * len(TARGETS), summary.render()
    by_region = summary.requests.by_region()
    copy = sum(by_region.get(r, {}).get(k, 0) for r in TARGETS for k in COPY_KINDS)
    out: dict[str, Any] = {
        "wall_s": wall, "requests": by_region, "requests_total": summary.requests.total,
        "copy_requests_per_image_target": copy / (count * len(TARGETS)),
        "requests_per_image": summary.requests.total / count,
    }  # fmt: skip
    measured(emu, out, cpu)
    if rerun:
        idle_wall, idle = run_imgmig(spec)
        assert idle.exit_code == 0, idle.render()
        assert idle.counts()["up_to_date"] == count * len(TARGETS), idle.render()
        out["idle"] = {"wall_s": idle_wall, "requests": idle.requests.by_region(),
                       "requests_per_image": idle.requests.total / count}  # fmt: skip
    return out


# === (i) the concurrent relay


async def relay(emu: Emu, count: int, *, hashing: bool = False, in_flight: int = IN_FLIGHT,
                connections: int = CONNECTIONS) -> float:  # fmt: skip
    """List the source, then per image (``in_flight`` at a time): create the copy in each target, pipe one
    GET of the source file to one PUT per target, GET each copy and check its status and checksum. With
    ``hashing``, it also hashes the bytes it relays (md5 + sha512 in a worker thread, as imgmig does) and
    checks them against the source's digests: a diagnostic variant, not the reference."""
    tenant = uuid.uuid4().hex
    async with new_session(TransportConfig(connections_per_region=connections)) as session:
        src_auth = PasswordAuth(emu.identity_url, BENCH_TENANT, "bench", Secret("bench"))
        dst_auth = PasswordAuth(emu.identity_url, tenant, "bench", Secret("bench"))
        start = time.perf_counter()
        src_token = (await src_auth.token(session)).id.reveal()
        dst_token = (await dst_auth.token(session)).id.reveal()
        src_url = emu.regions["SRC"]
        images: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            params = {"owner": BENCH_TENANT, "limit": "1000", **({"marker": marker} if marker else {})}
            async with session.get(f"{src_url}/v2/images", params=params, headers={"X-Auth-Token": src_token}) as resp:
                assert resp.status == 200, await resp.text()
                page = (await resp.json())["images"]
            images += page
            if len(page) < 1000:
                break
            marker = page[-1]["id"]
        assert len(images) == count, len(images)
        limiter = anyio.CapacityLimiter(in_flight)
        dst_headers = {"X-Auth-Token": dst_token}

        async def create(region: str, name: str, ids: dict[str, str]) -> None:
            async with session.post(f"{emu.regions[region]}/v2/images", json={"name": name, **RELAY_FIELDS},
                                    headers=dst_headers) as resp:  # fmt: skip
                assert resp.status == 201, await resp.text()
                ids[region] = (await resp.json())["id"]

        async def put(region: str, image_id: str, size: int, rx: Any) -> None:
            async def body() -> Any:
                async with rx:
                    async for chunk in rx:
                        yield chunk

            headers = {**dst_headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
            async with session.put(f"{emu.regions[region]}/v2/images/{image_id}/file", data=body(),
                                   headers=headers) as resp:  # fmt: skip
                assert resp.status == 204, await resp.text()

        async def verify(region: str, image_id: str, checksum: str) -> None:
            async with session.get(f"{emu.regions[region]}/v2/images/{image_id}", headers=dst_headers) as resp:
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
            assert doc["status"] == "active", doc
            assert doc["checksum"] == checksum, doc

        async def one(image: dict[str, Any]) -> None:
            async with limiter:
                ids: dict[str, str] = {}
                async with anyio.create_task_group() as tg:
                    for region in TARGETS:
                        tg.start_soon(create, region, image["name"], ids)
                streams = [anyio.create_memory_object_stream[bytes](4) for _ in TARGETS]
                async with anyio.create_task_group() as tg:
                    for region, (_, rx) in zip(TARGETS, streams, strict=True):
                        tg.start_soon(put, region, ids[region], image["size"], rx)
                    url = f"{src_url}/v2/images/{image['id']}/file"
                    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha512()
                    async with session.get(url, headers={"X-Auth-Token": src_token}) as resp:
                        assert resp.status == 200, await resp.text()
                        async for piece in resp.content.iter_chunked(MiB):
                            for tx, _ in streams:
                                await tx.send(piece)
                            if hashing:  # while the PUTs send the piece
                                await anyio.to_thread.run_sync(_update, md5, sha, piece)
                    if hashing:
                        assert md5.hexdigest() == image["checksum"], image
                        assert sha.hexdigest() == image["os_hash_value"], image
                    for tx, _ in streams:
                        await tx.aclose()
                async with anyio.create_task_group() as tg:
                    for region in TARGETS:
                        tg.start_soon(verify, region, ids[region], image["checksum"])

        async with anyio.create_task_group() as tg:
            for image in images:
                tg.start_soon(one, image)
        return time.perf_counter() - start


def _update(md5: Any, sha: Any, data: bytes) -> None:
    md5.update(data)
    sha.update(data)


def relay_round(emu: Emu, count: int, *, hashing: bool = False) -> dict[str, Any]:
    cpu = cpu_seconds(emu)
    out = {"wall_s": anyio.run(lambda: relay(emu, count, hashing=hashing))}
    measured(emu, out, cpu)
    return out


# === (ii) the sequential practice


def sequential(emu: Emu, count: int) -> float:
    """openstacksdk, one image and one target at a time: download from SRC, ``create_image`` in the target
    (which uploads and compares the checksum the target reports with the data's)."""
    import openstack  # only this figure needs it

    tenant = uuid.uuid4().hex

    def connect(project: str, region: str) -> Any:
        return openstack.connect(
            auth_type="v2password", region_name=region, load_yaml_config=False, load_envvars=False,
            auth={"auth_url": emu.identity_url, "username": "bench", "password": "bench", "tenant_id": project},
        )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openstacksdk's deprecation notes are not errors here
        start = time.perf_counter()
        src = connect(BENCH_TENANT, "SRC")
        targets = [connect(tenant, region) for region in TARGETS]
        try:
            images = list(src.image.images(owner=BENCH_TENANT))
            assert len(images) == count, len(images)
            for image in images:
                for conn in targets:
                    data = src.image.download_image(image).content
                    copy = conn.image.create_image(
                        name=image.name, data=data, disk_format="raw", container_format="bare", os_type="linux",
                        validate_checksum=True, wait=True,
                    )  # fmt: skip
                    assert copy.status == "active", copy
                    assert copy.checksum == image.checksum, copy
            return time.perf_counter() - start
        finally:
            for conn in (src, *targets):
                conn.close()


# === the figure


def bench_small(count: int, *, reps: int = 3, sweep_reps: int = 2) -> dict[str, Any]:
    """(e) imgmig vs the concurrent relay and vs the sequential practice, at 30 ms and at 0 ms; requests per
    image; the ``images_in_flight`` sweep at 30 ms, with the default connections per region and with as
    many connections as images in flight. imgmig and relay wall times are the best of ``reps`` alternating
    runs (the sequential practice runs once: its time is long and steady), their CPU seconds (client side
    and emulator) the mean over those runs; sweep times are the best of ``sweep_reps`` runs."""
    out: dict[str, Any] = {"images": count, "in_flight": IN_FLIGHT, "connections_per_region": CONNECTIONS}
    with tempfile.TemporaryDirectory() as tmp, emulator("SRC,T1,T2", Path(tmp) / "emu") as emu:
        sources = make_sources(emu, count)
        out["source_mib"] = sum(s["size"] for s in sources) / MiB
        state = Path(tmp) / "state"
        for latency in (0.030, 0.0):
            set_latency(emu, latency)
            key = f"{round(latency * 1000)}ms"
            rounds: list[dict[str, Any]] = []
            relays: list[dict[str, Any]] = []
            hashing: list[dict[str, Any]] = []
            uninspected: list[dict[str, Any]] = []
            for rep in range(reps):  # with and without the format inspection, alternately
                rounds.append(imgmig_round(emu, state, count, rerun=rep == 0 and latency > 0))
                uninspected.append(imgmig_round(emu, state, count, inspect=False))
                relays.append(relay_round(emu, count))
                hashing.append(relay_round(emu, count, hashing=True))
            row: dict[str, Any] = {
                "imgmig_s": min(r["wall_s"] for r in rounds), "relay_s": min(r["wall_s"] for r in relays),
                "relay_hashing_s": min(r["wall_s"] for r in hashing),
                "imgmig_without_inspection_s": min(r["wall_s"] for r in uninspected),
            }  # fmt: skip
            walls = [r["wall_s"] for r in rounds]
            row["imgmig_spread_s"] = max(walls) - min(walls)  # the run's own spread, to judge inspection's cost by
            row["inspection_cost_s"] = row["imgmig_s"] - row["imgmig_without_inspection_s"]
            row["ratio"] = row["relay_s"] / row["imgmig_s"]
            row["ratio_vs_hashing_relay"] = row["relay_hashing_s"] / row["imgmig_s"]
            for name, runs in (("imgmig", rounds), ("relay", relays), ("relay_hashing", hashing)):
                row[f"{name}_runs_s"] = [r["wall_s"] for r in runs]
                for cpu in ("client_cpu_s", "emulator_cpu_s"):
                    row[f"{name}_{cpu}"] = sum(r[cpu] for r in runs) / len(runs)
            first = rounds[0]
            row["copy_requests_per_image_target"] = first["copy_requests_per_image_target"]
            row["requests_per_image"] = first["requests_per_image"]
            row["requests"] = first["requests"]
            if "idle" in first:
                row["idle"] = first["idle"]
            row["sequential_s"] = sequential(emu, count)
            row["speedup"] = row["sequential_s"] / row["imgmig_s"]
            out[key] = row
        set_latency(emu, 0.030)
        sweep: dict[str, Any] = {}
        for n in SWEEP:
            default = [imgmig_round(emu, state, count, in_flight=n)["wall_s"] for _ in range(sweep_reps)]
            wide = [imgmig_round(emu, state, count, in_flight=n, connections=max(CONNECTIONS, n))["wall_s"]
                    for _ in range(sweep_reps)]  # fmt: skip
            sweep[str(n)] = {"wall_s": min(default), "wall_s_connections_n": min(wide), "runs_s": default,
                             "runs_s_connections_n": wide}  # fmt: skip
        out["sweep_30ms"] = sweep
    return out
