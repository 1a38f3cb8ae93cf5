"""``imgmig verify``: compare every copy with its source, without changing anything.

For each selected image x target it reports whether a verified copy exists (size and digests equal to
the source's), and every metadata difference (properties, tags, members, visibility, protection). With
``deep``, each copy is downloaded and hashed, and the digests are compared with the source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.cloud.transport import new_session
from pipeline.config import JobSpec
from pipeline.errors import ApiError
from pipeline.models import Image, Verdict
from pipeline.plan.intent import Intent
from pipeline.plan.planner import Action, download_allowed, expected_content, kept_copy, not_copied
from pipeline.plan.provenance import PROV_SOURCE_ID
from pipeline.run.inventory import Clients, discover, retry_policy, transport_config
from pipeline.state.journal import Journal
from pipeline.state.records import JournalState
from pipeline.transfer.inspection import StreamInspector
from pipeline.transfer.source import read_digests

__all__ = ["Finding", "VerifyReport", "verify_job"]


@dataclass
class Finding:
    image_id: str
    name: str | None
    target: str
    status: str  # ok, differs, missing, skipped, not_portable, unavailable
    target_id: str | None = None
    #: The format the inspector found in the source's head when this job copied it (its journalled verdict).
    format: str | None = None
    details: list[str] = field(default_factory=list)
    #: What could not be checked, and why (not a difference).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = {"image_id": self.image_id, "name": self.name, "target": self.target, "status": self.status,
               "target_id": self.target_id, "details": self.details}  # fmt: skip
        if self.notes:
            doc["notes"] = self.notes
        if self.format is not None:
            doc["format"] = self.format
        return doc


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    deep: bool = False

    @property
    def ok(self) -> bool:
        return all(f.status in ("ok", "skipped") for f in self.findings)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "deep": self.deep, "counts": self.counts(),
                "findings": [f.to_json() for f in self.findings]}  # fmt: skip


def _inspected_format(state: JournalState, image: Image) -> str | None:
    """The format the inspector found when this job read the source (its journalled verdict, for the source's
    current checksum), or None: not inspected (copied by an imgmig without inspection)."""
    seen = state.inspected(image.id, image.checksum)
    return str(seen.get("format")) if seen is not None else None


async def verify_job(spec: JobSpec, *, deep: bool = False) -> VerifyReport:
    """Compare every selected image with its copies in every target."""
    report = VerifyReport(deep=deep)
    state = Journal.read(spec.run.journal_dir, spec.name, packed=True)
    retry = retry_policy(spec)
    async with new_session(transport_config(spec)) as session:
        inventory = await discover(spec, Clients(spec, session, retry), state.schemas)
        intent = Intent(spec, inventory, state)
        for image in inventory.images:
            for label, target in inventory.targets.items():
                finding = Finding(image.id, image.name, label, "ok")
                report.findings.append(finding)
                whole = not_copied(image, spec.copy, spec.select.volume_backed)
                if whole is not None:
                    action, reason = whole
                    finding.status, finding.details = "skipped" if action is Action.SKIP else action.value, [reason]
                    continue
                if target.error:
                    finding.status, finding.details = "unavailable", [target.error]
                    continue
                copies = [c for c in target.copies if c.raw.get(PROV_SOURCE_ID) == image.id]
                entry = state.target(image.id, label)
                copy = kept_copy(image, copies, entry)  # the copy the run keeps, nothing else
                if copy is None:
                    finding.status = "missing"
                    finding.details = [f"copy {c.id} is {c.status}" + (" with different data" if c.status == "active"
                                       else "") for c in copies] or ["no copy in this target"]  # fmt: skip
                    continue
                finding.target_id = copy.id
                finding.format = _inspected_format(state, image)
                if len(copies) > 1:
                    finding.details.append(f"{len(copies) - 1} extra copies: "
                                           f"{', '.join(c.id for c in copies if c is not copy)}")  # fmt: skip
                finding.details += intent.diff(image, label, copy).describe()
                if deep and not download_allowed(copy):
                    # NHN serves no data of an image whose nhncloud_allow_download is false, and verify
                    # changes nothing: the copy's own size and digests were compared above
                    finding.notes.append("deep read skipped: the copy's nhncloud_allow_download is false (it "
                                         "carries the source's value), so NHN serves none of its data")  # fmt: skip
                elif deep:
                    inspector = StreamInspector()  # the copy's bytes judged as they are read back
                    try:
                        read = await read_digests(target.client, copy, also=[image.os_hash_algo], inspector=inspector)
                    except ApiError as exc:
                        finding.details.append(f"deep read failed: {exc}")
                    else:
                        seen = inspector.verdict(copy.raw.get("disk_format"), copy.raw.get("container_format"))
                        finding.format = seen.format
                        if seen.refused(spec.copy.allow_format_mismatch):
                            finding.details.append(f"content: {seen.reason}")
                        # the bytes read back, judged as the planner judges the copy's own record (a source
                        # without a checksum is compared with the digests journalled for this copy)
                        verdict = expected_content(image, copy.id, entry).held_by(read)
                        if verdict.verdict is Verdict.MISMATCH:
                            finding.details.append(f"data: the copy's bytes differ from the source's: {verdict.reason}")
                if finding.details:
                    finding.status = "differs"
    return report
