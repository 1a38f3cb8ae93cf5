"""Shared fixtures: the embedded emulator on ephemeral loopback ports, a client session, a Cloud view."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from pipeline.emulator import Emulator, running_emulator
from pipeline.glance import new_session

from .cloud import Cloud


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults, whatever the previous test configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    """Three emulated regions (KR1, KR2, JP1) in this test's event loop; stopped after the test."""
    async with running_emulator(("KR1", "KR2", "JP1"), data_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
async def cloud(emulator: Emulator) -> AsyncIterator[Cloud]:
    """The emulator seen through the backend-neutral Cloud interface."""
    async with new_session() as session:
        yield Cloud("emulator", emulator.identity_url, dict(emulator.urls), session, emulator=emulator)
