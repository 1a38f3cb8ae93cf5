"""The verifying relay of bench (e)'s whole-process mode, as a program of its own: it imports aiohttp, anyio and
hashlib only (not imgmig), so its start-up is what a lean tool's would be.

``python -m bench.relay_proc CONFIG_JSON``: take a token for the source and one for the targets, list the source
project's images, then per image (``in_flight`` at a time): create the copy in each target, pipe one GET of the
source file to one PUT per target while hashing it (md5 + sha512 in a worker thread, as imgmig does), check the
digests against the source's, and read each copy back once (GET: status active, size, checksum and
os_hash_value equal to what was streamed). Exit 0 only if every copy verified.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import aiohttp
import anyio

CHUNK = 1 << 20
FIELDS = {"os_type": "linux", "disk_format": "raw", "container_format": "bare"}


async def _token(session: aiohttp.ClientSession, identity_url: str, tenant: str, user: str, password: str) -> str:
    body = {"auth": {"tenantId": tenant, "passwordCredentials": {"username": user, "password": password}}}
    async with session.post(f"{identity_url}/tokens", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access"]["token"]["id"])


def _update(md5: Any, sha: Any, data: bytes) -> None:
    md5.update(data)
    sha.update(data)


async def relay(cfg: dict[str, Any]) -> int:
    regions: dict[str, str] = cfg["regions"]
    targets: list[str] = cfg["targets"]
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=cfg["connections"])
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        src_token = await _token(session, cfg["identity_url"], cfg["source_tenant"], cfg["user"], cfg["password"])
        dst_token = await _token(session, cfg["identity_url"], cfg["target_tenant"], cfg["user"], cfg["password"])
        src_url, src_headers, dst_headers = regions[cfg["source"]], {"X-Auth-Token": src_token}, {
            "X-Auth-Token": dst_token}  # fmt: skip
        images: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            params = {"owner": cfg["source_tenant"], "limit": "1000", **({"marker": marker} if marker else {})}
            async with session.get(f"{src_url}/v2/images", params=params, headers=src_headers) as resp:
                assert resp.status == 200, await resp.text()
                page = (await resp.json())["images"]
            images += page
            if len(page) < 1000:
                break
            marker = page[-1]["id"]
        limiter = anyio.CapacityLimiter(cfg["in_flight"])
        verified = 0

        async def create(region: str, name: str, ids: dict[str, str]) -> None:
            async with session.post(f"{regions[region]}/v2/images", json={"name": name, **FIELDS},
                                    headers=dst_headers) as resp:  # fmt: skip
                assert resp.status == 201, await resp.text()
                ids[region] = (await resp.json())["id"]

        async def put(region: str, image_id: str, size: int, rx: Any) -> None:
            async def body() -> Any:
                async with rx:
                    async for chunk in rx:
                        yield chunk

            headers = {**dst_headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
            async with session.put(f"{regions[region]}/v2/images/{image_id}/file", data=body(),
                                   headers=headers) as resp:  # fmt: skip
                assert resp.status == 204, await resp.text()

        async def read_back(region: str, image_id: str, expected: dict[str, Any]) -> None:
            nonlocal verified
            async with session.get(f"{regions[region]}/v2/images/{image_id}", headers=dst_headers) as resp:
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
            assert doc["status"] == "active", doc
            for key, value in expected.items():
                assert doc[key] == value, (key, doc)
            verified += 1

        async def one(image: dict[str, Any]) -> None:
            async with limiter:
                ids: dict[str, str] = {}
                async with anyio.create_task_group() as tg:
                    for region in targets:
                        tg.start_soon(create, region, image["name"], ids)
                streams = [anyio.create_memory_object_stream[bytes](4) for _ in targets]
                md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha512()
                async with anyio.create_task_group() as tg:
                    for region, (_, rx) in zip(targets, streams, strict=True):
                        tg.start_soon(put, region, ids[region], image["size"], rx)
                    async with session.get(f"{src_url}/v2/images/{image['id']}/file", headers=src_headers) as resp:
                        assert resp.status == 200, await resp.text()
                        async for piece in resp.content.iter_chunked(CHUNK):
                            for tx, _ in streams:
                                await tx.send(piece)
                            await anyio.to_thread.run_sync(_update, md5, sha, piece)
                    for tx, _ in streams:
                        await tx.aclose()
                expected = {"size": image["size"], "checksum": md5.hexdigest(), "os_hash_value": sha.hexdigest()}
                assert expected["checksum"] == image["checksum"], image
                assert expected["os_hash_value"] == image["os_hash_value"], image
                async with anyio.create_task_group() as tg:
                    for region in targets:
                        tg.start_soon(read_back, region, ids[region], expected)

        async with anyio.create_task_group() as tg:
            for image in images:
                tg.start_soon(one, image)
        print(json.dumps({"images": len(images), "verified": verified}))
        return 0 if verified == len(images) * len(targets) else 1


if __name__ == "__main__":
    sys.exit(anyio.run(relay, json.loads(sys.argv[1])))
