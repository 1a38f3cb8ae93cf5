"""Shared fixtures: the embedded emulator, a session-wide real Glance 33 cluster, and the Cloud view of both.

``cloud`` is parametrized by backend, so every contract test runs as ``test_x[emulator]`` (in-process,
function-scoped) and ``test_x[glance]`` (real Glance 33 on loopback, started once per session, marked
``real_glance``). Tests that need emulator-only knobs (fault injection) take ``emulator_cloud`` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog

from pipeline.cloud import new_session
from pipeline.emulator import Emulator, running_emulator

from .cloud import Cloud

if TYPE_CHECKING:
    from .realglance import GlanceCluster, KeystoneCluster

# the helpers test modules share assert (assert_same, the invariants): pytest rewrites them as it does tests, so a
# failure shows the values compared (register before any test module imports jobsetup)
pytest.register_assert_rewrite("tests.jobsetup")

GLANCE_REGIONS = ("KR1", "KR2", "JP1")


@dataclass(frozen=True)
class Backend:
    """The backend one parametrization of ``cloud`` runs against (the cluster only for real Glance)."""

    kind: str
    cluster: GlanceCluster | None = None


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults, whatever the previous test configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """Three emulated regions (KR1, KR2, JP1) in this test's event loop; stopped after the test."""
    async with running_emulator(GLANCE_REGIONS, data_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture(scope="session")
def glance_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceCluster]:
    """Real Glance 33 in three regions behind the identity shim, started once for the whole session.

    ``running_glance`` stops exactly the processes it started when the session ends, also after a failure.
    Imported lazily so that emulator-only runs never touch the Glance harness.
    """
    from .realglance import running_glance

    state_dir = tmp_path_factory.mktemp("realglance-contract")
    with running_glance(GLANCE_REGIONS, state_dir=state_dir) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ks_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceCluster]:
    """Real Glance 33 regions that also accept real Keystone 30 (v3) tokens, started once for the session.

    ``running_glance`` stops every process it started on any exit, start-up failures included."""
    from .realglance import running_glance

    with running_glance(GLANCE_REGIONS, state_dir=tmp_path_factory.mktemp("keystone"), keystone=True) as running:
        yield running


@pytest.fixture(scope="session")
def keystone(ks_cluster: GlanceCluster) -> KeystoneCluster:
    """The real Keystone of ``ks_cluster``: its URL, users, projects, application credential, endpoints."""
    assert ks_cluster.keystone is not None
    return ks_cluster.keystone


@pytest.fixture(
    params=[pytest.param("emulator"), pytest.param("glance", marks=pytest.mark.real_glance)],
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Which backend ``cloud`` talks to; the first ``glance`` test starts the session's Glance cluster."""
    if request.param == "glance":
        # Resolved here, in a sync fixture, so no event loop is running while the cluster starts.
        return Backend("glance", request.getfixturevalue("glance_cluster"))
    return Backend(str(request.param))


@pytest.fixture
async def cloud(backend: Backend, tmp_path: Path) -> AsyncIterator[Cloud]:
    """One backend (emulator or real Glance 33) seen through the backend-neutral Cloud interface."""
    async with new_session() as session:
        if backend.cluster is not None:
            cluster = backend.cluster
            yield Cloud("glance", cluster.identity_url, dict(cluster.regions), session)
            return
        # upload inspection on, like the Glance 33 harness (require_image_format_match = true)
        # plain Glance downloads too: the contract is Glance's, and real Glance has no download permission
        async with running_emulator(GLANCE_REGIONS, data_dir=tmp_path / "emulator", require_format_match=True,
                                    download_rule=False) as emu:  # fmt: skip
            yield Cloud("emulator", emu.identity_url, dict(emu.urls), session, emulator=emu)


@pytest.fixture(params=["emulator"])
async def emulator_cloud(emulator: Emulator) -> AsyncIterator[Cloud]:
    """The emulator only, for tests that use its fault knobs (``cloud.emulator``); ids stay ``[emulator]``."""
    async with new_session() as session:
        yield Cloud("emulator", emulator.identity_url, dict(emulator.urls), session, emulator=emulator)
