"""Job files: the full example, defaults, secrets, and every broken file reported with its key path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import (
    DEFAULT_IDENTITY_URL,
    DEFAULT_JOURNAL_ROOT,
    CopyOptions,
    JobSpec,
    RunOptions,
    Secret,
    Select,
    Source,
    Target,
    TransferOptions,
    load_job,
    parse_job,
)
from pipeline.errors import JobSpecError
from pipeline.units import GiB, MiB

JOBS = Path(__file__).parent / "jobs"
SECRET = "s3cr3t-Pa55word"  # must never show up in any output
ENV = {
    "NHN_API_PASSWORD": SECRET,
    "NHN_API_PASSWORD_DST": SECRET + "-dst",
    "NHN_TOKEN": SECRET + "-token",
    "EMPTY_VAR": "",
}

# A minimal valid job, in pieces a case can swap out. Top-level keys must come before any table.
NAME = 'name = "minimal"\n'
AUTH = """
[auth.src]
tenant_id = "tenant-1"
username = "user@example.com"
password_env = "NHN_API_PASSWORD"
"""
SOURCE = '\n[source]\nauth = "src"\nregion = "KR1"\n'
TARGET = '\n[[targets]]\nauth = "src"\nregion = "JP1"\n'


def job(*, name: str = NAME, auth: str = AUTH, source: str = SOURCE, targets: str = TARGET, extra: str = "") -> str:
    """A job file's text: the minimal job with some pieces replaced or appended."""
    return name + auth + source + targets + extra


def write(tmp_path: Path, text: str) -> Path:
    """Write a job file into the test's directory and return its path."""
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


# === valid files


def test_full_example_parses() -> None:
    """The fixture that sets every key parses into the expected dataclasses."""
    spec = load_job(JOBS / "valid-full.toml", ENV)

    assert spec.name == "dr-kr1-to-jp1"
    assert spec.path == JOBS / "valid-full.toml"
    assert list(spec.auth) == ["src", "dst", "fixed"]
    src = spec.auth["src"]
    assert src.identity_url == "https://identity.example.test/v2.0"
    assert (src.tenant_id, src.username, src.password_env) == (
        "tenant-src",
        "user@example.com",
        "NHN_API_PASSWORD",
    )
    assert src.password == Secret(SECRET)
    assert src.token is None
    assert spec.auth["dst"].identity_url == DEFAULT_IDENTITY_URL
    fixed = spec.auth["fixed"]
    assert fixed.token == Secret(SECRET + "-token")
    assert fixed.password is None
    assert fixed.location == "https://kr2-api-image-infrastructure.example.test"
    assert spec.source == Source(auth="src", region="KR1")
    assert spec.targets == (
        Target(auth="dst", region="JP1"),
        Target(auth="src", region="KR2"),
        Target(auth="fixed", region="KR2"),
    )
    assert spec.profile(spec.targets[0]) is spec.auth["dst"]

    assert spec.select == Select(
        ids=("0b7a4b8e-1111-4a5c-9b7e-000000000001",),
        names=("ubuntu-*", "centos-[78]*"),
        visibility=("private", "shared", "community"),
        tags=("golden", "dr"),
        owner="tenant-src",
        size_min=MiB,
        size_max=10 * GiB,
        nhncloud_product="compute",
        updated_since=datetime(2024, 5, 1, tzinfo=UTC),
        properties={"os_distro": "ubuntu", "os_version": "22.04"},
    )
    assert spec.copy == CopyOptions(
        properties=("os_*", "hw_*"),
        exclude_properties=("hw_qemu_guest_agent",),
        tags=False,
        members=True,
        visibility=False,
        protected=False,
        on_change="keep",
        additive=True,
        member_map={"tenant-src-friend": "tenant-dst-friend"},
        accept_members_with=("dst",),
        community="private",
    )
    # model_construct: rates in bytes/s, as parsed (a job file must spell a unit)
    assert spec.transfer == TransferOptions.model_construct(
        images_in_flight=8,
        chunk_size=16 * MiB,
        buffer_depth=2,
        bandwidth=200.0 * MiB,
        region_bandwidth={"JP1": 50.0 * MiB},  # KR2 = "0" means unlimited: no entry
        retries=3,
        connections_per_region=16,
        spool_dir=Path("/var/tmp/imgmig-spool"),
        connect_timeout=10.0,
        read_timeout=120.0,
    )
    assert spec.run == RunOptions(journal_dir=Path("/var/lib/imgmig/dr"), max_runtime=5400.0, insecure=True)


def test_minimal_job_gets_every_default() -> None:
    """A job with only the required keys gets the documented defaults everywhere."""
    spec = load_minimal()

    assert spec.path is None
    assert spec.auth["src"].identity_url == DEFAULT_IDENTITY_URL
    assert spec.auth["src"].location == f"{DEFAULT_IDENTITY_URL} tenant tenant-1"
    assert spec.select == Select()
    assert spec.select.visibility == ("private", "shared")
    assert spec.copy == CopyOptions()
    assert spec.copy.on_change == "replace"
    assert spec.copy.community == "skip"
    assert spec.transfer == TransferOptions()
    assert (spec.transfer.images_in_flight, spec.transfer.chunk_size, spec.transfer.buffer_depth) == (
        8,
        8 * MiB,
        4,
    )
    assert spec.transfer.bandwidth is None
    assert (spec.transfer.connect_timeout, spec.transfer.read_timeout) == (30.0, 120.0)
    # a document parsed without a file: relative to the working directory
    assert spec.run == RunOptions(journal_dir=Path.cwd() / DEFAULT_JOURNAL_ROOT / "minimal")
    assert spec.run.journal_dir == Path.cwd() / "state" / "minimal"
    assert spec.run.max_runtime is None


def load_minimal(environ: dict[str, str] | None = None, **kwargs: bool) -> JobSpec:
    """The minimal job, parsed from its TOML text without touching the file system."""
    return parse_job(tomllib.loads(job()), "minimal.toml", ENV if environ is None else environ, **kwargs)


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ('[transfer]\nbandwidth = "0"\nconnect_timeout = 5', lambda s: s.transfer.bandwidth is None),
        ("[transfer]\nbandwidth = 0", lambda s: s.transfer.bandwidth is None),
        ('[transfer]\nbandwidth = "100Mbit/s"', lambda s: s.transfer.bandwidth == 12_500_000),
        ('[run]\nmax_runtime = "0"', lambda s: s.run.max_runtime is None),
        ('[run]\nmax_runtime = "PT50M"', lambda s: s.run.max_runtime == 3000.0),
        ('[select]\nsize_max = 0\nsize_min = "1GiB"', lambda s: s.select.size_max is None),
        ("[select]\nsize_max = 1073741824", lambda s: s.select.size_max == GiB),
        ("[copy]\nproperties = false", lambda s: s.copy.properties is False),
        (
            '[select]\nupdated_since = "2024-05-01T09:00:00+09:00"',
            lambda s: s.select.updated_since.utcoffset(),
        ),
        ('[select]\nvisibility = ["shared", "shared"]', lambda s: s.select.visibility == ("shared",)),
    ],
    ids=[
        "bandwidth-0-string",
        "bandwidth-0-int",
        "bandwidth-bits",
        "max-runtime-0",
        "max-runtime-iso",
        "size-max-0-is-no-limit",
        "size-max-int",
        "copy-properties-false",
        "updated-since-rfc3339-string",
        "visibility-deduplicated",
    ],
)
def test_value_forms(tmp_path: Path, extra: str, check: object) -> None:
    """Alternative spellings of values parse to the documented meaning."""
    spec = load_job(write(tmp_path, job(extra=extra)), ENV)
    assert check(spec)  # type: ignore[operator]


def test_ca_bundle_that_exists(tmp_path: Path) -> None:
    """An existing ca_bundle is kept as a Path."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not really a certificate\n")
    spec = load_job(write(tmp_path, job(extra=f"[run]\nca_bundle = {str(bundle)!r}\n")), ENV)
    assert spec.run.ca_bundle == bundle


# === secrets


def test_secrets_come_from_the_given_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The password is read from the environ mapping passed in, not from os.environ."""
    monkeypatch.setenv("NHN_API_PASSWORD", "from-os-environ")
    spec = load_minimal({"NHN_API_PASSWORD": SECRET})
    password = spec.auth["src"].password
    assert password is not None
    assert password.reveal() == SECRET


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without an environ mapping, load_job reads the process environment."""
    monkeypatch.setenv("NHN_API_PASSWORD", "from-os-environ")
    spec = load_job(write(tmp_path, job()))
    assert spec.auth["src"].password == Secret("from-os-environ")


def test_secrets_never_in_repr() -> None:
    """Neither repr nor str of the spec, a profile or a secret shows the password or token."""
    spec = load_job(JOBS / "valid-full.toml", ENV)
    for shown in (repr(spec), str(spec), repr(spec.auth["src"]), repr(spec.auth["fixed"].token)):
        assert SECRET not in shown
    assert "***" in repr(spec.auth["src"])


def test_secrets_not_needed() -> None:
    """With need_secrets=False the variables need not be set, and no secret is read."""
    spec = load_minimal({}, need_secrets=False)
    assert spec.auth["src"].password is None
    assert spec.auth["src"].password_env == "NHN_API_PASSWORD"


def test_secrets_never_in_errors(tmp_path: Path) -> None:
    """A failing job file whose secrets are set does not leak them into the error message."""
    text = job(extra='[transfer]\nretries = "many"\n')
    with pytest.raises(JobSpecError, match=r"transfer\.retries") as caught:
        load_job(write(tmp_path, text), ENV)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.problems)


def test_password_pasted_as_env_name_is_not_echoed(tmp_path: Path) -> None:
    """A password pasted where the variable's name belongs, or as a key, is not repeated back."""
    auth = AUTH.replace('"NHN_API_PASSWORD"', f'"{SECRET}!"') + f'password = "{SECRET}"\n'
    with pytest.raises(JobSpecError, match="name it in password_env") as caught:
        load_job(write(tmp_path, job(auth=auth)), ENV)
    assert SECRET not in str(caught.value)


# === broken files: one case per kind of problem

BROKEN: list[tuple[str, str | None, str, str]] = [
    # (id, file text or None for no file, dotted path, message regex)
    ("missing-name", job(name=""), "name", "missing required key"),
    (
        "missing-source-region",
        job(source='[source]\nauth = "src"\n'),
        "source.region",
        "missing required key",
    ),
    ("missing-targets", job(targets=""), "targets", "missing required key"),
    ("empty-targets", job(name=NAME + "targets = []\n", targets=""), "targets", "at least one target"),
    (
        "missing-token-env",
        job(auth='[auth.src]\nendpoint = "https://img.example.test"\n'),
        "auth.src.token_env",
        "missing required key",
    ),
    (
        "wrong-type-int",
        job(extra='[transfer]\nretries = "5"\n'),
        "transfer.retries",
        "expected an integer, got a string",
    ),
    (
        "wrong-type-str",
        job(source='[source]\nauth = "src"\nregion = 1\n'),
        "source.region",
        "expected a string, got an integer",
    ),
    ("wrong-type-table", job(name=NAME + 'select = "all"\n'), "select", "expected a table, got a string"),
    ("unknown-key-top", job(name=NAME + 'colour = "blue"\n'), "colour", "unknown key"),
    (
        "unknown-key-nested",
        job(extra='[transfer]\nchunksize = "8MiB"\n'),
        "transfer.chunksize",
        "unknown key \\(did you mean 'chunk_size'\\?\\)",
    ),
    ("unknown-key-auth", job(auth=AUTH + 'region = "KR1"\n'), "auth.src.region", "unknown key"),
    (
        "bad-glob-names",
        job(extra='[select]\nnames = ["ok-*", "ubuntu-["]\n'),
        "select.names[1]",
        "bad glob 'ubuntu-\\[': unclosed",
    ),
    (
        "bad-glob-empty",
        job(extra='[copy]\nexclude_properties = [""]\n'),
        "copy.exclude_properties[0]",
        "bad glob '': empty",
    ),
    (
        "bad-glob-copy-properties",
        job(extra='[copy]\nproperties = ["os_[a-z"]\n'),
        "copy.properties",
        "bad glob",
    ),
    (
        "bad-size",
        job(extra='[select]\nsize_min = "12XB"\n'),
        "select.size_min",
        "bad size '12XB': unknown unit",
    ),
    ("bad-chunk-size", job(extra='[transfer]\nchunk_size = "eight"\n'), "transfer.chunk_size", "bad size"),
    (
        "bad-duration",
        job(extra='[run]\nmax_runtime = "5 years"\n'),
        "run.max_runtime",
        "bad duration '5 years'",
    ),
    (
        "bad-timeout-zero",
        job(extra='[transfer]\nread_timeout = "0"\n'),
        "transfer.read_timeout",
        "longer than 0s",
    ),
    ("bad-rate", job(extra='[transfer]\nbandwidth = "200MiB"\n'), "transfer.bandwidth", "bad rate '200MiB'"),
    (
        "bad-region-rate",
        job(extra='[transfer]\nregion_bandwidth = { JP1 = "fast" }\n'),
        "transfer.region_bandwidth.JP1",
        "bad rate 'fast'",
    ),
    (
        "region-rate-unknown-region",
        job(extra='[transfer]\nregion_bandwidth = { JP2 = "1MiB/s" }\n'),
        "transfer.region_bandwidth.JP2",
        "neither the source region nor a target region",
    ),
    (
        "env-not-set",
        job(auth=AUTH.replace("NHN_API_PASSWORD", "UNSET_VAR")),
        "auth.src.password_env",
        "environment variable UNSET_VAR is not set",
    ),
    (
        "env-empty",
        job(auth=AUTH.replace("NHN_API_PASSWORD", "EMPTY_VAR")),
        "auth.src.password_env",
        "environment variable EMPTY_VAR is empty",
    ),
    (
        "bad-env-name",
        job(auth=AUTH.replace("NHN_API_PASSWORD", "NHN-PASSWORD")),
        "auth.src.password_env",
        "NAME of an environment variable",
    ),
    (
        "bad-url",
        job(auth=AUTH + 'identity_url = "ftp://identity.example.test"\n'),
        "auth.src.identity_url",
        "http:// or https://",
    ),
    (
        "url-without-host",
        job(auth=AUTH + 'identity_url = "https:///v2.0"\n'),
        "auth.src.identity_url",
        "with a host",
    ),
    (
        "unknown-profile-source",
        job(source='[source]\nauth = "dst"\nregion = "KR1"\n'),
        "source.auth",
        "unknown auth profile 'dst'; defined: src",
    ),
    (
        "unknown-profile-target",
        job(targets=TARGET + '[[targets]]\nauth = "dst"\nregion = "KR2"\n'),
        "targets[1].auth",
        "unknown auth profile 'dst'; defined: src",
    ),
    (
        "unknown-profile-accept",
        job(extra='[copy]\naccept_members_with = ["src", "ghost"]\n'),
        "copy.accept_members_with[1]",
        "unknown auth profile 'ghost'",
    ),
    ("duplicate-targets", job(targets=TARGET * 2), "targets[1]", "duplicate target: .* as targets\\[0\\]"),
    (
        "duplicate-target-other-profile",
        job(
            auth=AUTH + AUTH.replace("auth.src", "auth.alias"),
            targets=TARGET + TARGET.replace("src", "alias"),
        ),
        "targets[1]",
        "duplicate target",
    ),
    (
        "duplicate-endpoint-trailing-slash",
        job(
            auth='[auth.a]\nendpoint = "https://img.test/"\ntoken_env = "NHN_TOKEN"\n'
            '[auth.b]\nendpoint = "https://img.test/v2"\ntoken_env = "NHN_TOKEN"\n',
            source='\n[source]\nauth = "a"\nregion = "KR1"\n',
            targets='\n[[targets]]\nauth = "a"\nregion = "JP1"\n[[targets]]\nauth = "b"\nregion = "JP1"\n',
        ),
        "targets[1]",
        "duplicate target",
    ),
    ("target-is-source", job(targets=TARGET.replace("JP1", "KR1")), "targets[0]", "target is the source"),
    (
        "public-visibility",
        job(extra='[select]\nvisibility = ["private", "public"]\n'),
        "select.visibility",
        "public images are never copied",
    ),
    (
        "unknown-visibility",
        job(extra='[select]\nvisibility = ["secret"]\n'),
        "select.visibility",
        "unknown visibility 'secret'",
    ),
    (
        "both-auth-forms",
        job(auth=AUTH + 'endpoint = "https://img.example.test"\ntoken_env = "NHN_TOKEN"\n'),
        "auth.src",
        "either username \\+ password_env or endpoint \\+ token_env, not both",
    ),
    (
        "no-auth-form",
        job(auth='[auth.src]\nidentity_url = "https://id.example.test"\n'),
        "auth.src",
        "needs tenant_id, username and password_env, or endpoint and token_env",
    ),
    ("toml-syntax", job(name="name = \n"), "", "TOML syntax error: .*line 1, column"),
    ("missing-file", None, "", "cannot read the file: No such file or directory"),
    (
        "in-flight-too-low",
        job(extra="[transfer]\nimages_in_flight = 0\n"),
        "transfer.images_in_flight",
        "must be between 1 and 64, got 0",
    ),
    (
        "buffer-depth-too-high",
        job(extra="[transfer]\nbuffer_depth = 65\n"),
        "transfer.buffer_depth",
        "must be between 1 and 64, got 65",
    ),
    ("retries-negative", job(extra="[transfer]\nretries = -1\n"), "transfer.retries", "between 0 and 100"),
    (
        "connections-too-high",
        job(extra="[transfer]\nconnections_per_region = 257\n"),
        "transfer.connections_per_region",
        "between 1 and 256",
    ),
    (
        "chunk-size-too-small",
        job(extra='[transfer]\nchunk_size = "32KiB"\n'),
        "transfer.chunk_size",
        "must be between 64.0 KiB and 256.0 MiB, got 32.0 KiB",
    ),
    (
        "bool-is-not-int",
        job(extra="[transfer]\nretries = true\n"),
        "transfer.retries",
        "expected an integer, got a boolean",
    ),
    (
        "size-min-gt-max",
        job(extra='[select]\nsize_min = "2GiB"\nsize_max = "1GiB"\n'),
        "select.size_min",
        "larger than select.size_max",
    ),
    (
        "bad-product",
        job(extra='[select]\nnhncloud_product = "tpu"\n'),
        "select.nhncloud_product",
        "must be 'compute' or 'gpu'",
    ),
    (
        "naive-datetime",
        job(extra="[select]\nupdated_since = 2024-05-01T00:00:00\n"),
        "select.updated_since",
        "needs a UTC offset",
    ),
    (
        "bad-on-change",
        job(extra='[copy]\non_change = "merge"\n'),
        "copy.on_change",
        "must be 'replace' or 'keep', got 'merge'",
    ),
    (
        "ca-bundle-missing",
        job(extra='[run]\nca_bundle = "/nonexistent/ca.pem"\n'),
        "run.ca_bundle",
        "file not found",
    ),
    ("bad-job-name", job(name='name = "../etc"\n'), "name", "must be 1-64 letters"),
    (
        "quoted-key-path",
        job(extra='[select.properties]\n"os.type" = 1\n'),
        'select.properties."os.type"',
        "expected a string, got an integer",
    ),
]


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_job_files(tmp_path: Path, text: str | None, path: str, message: str) -> None:
    """Each broken file raises JobSpecError (exit 2) with a one-line message naming the key path."""
    job_file = tmp_path / "job.toml" if text is None else write(tmp_path, text)

    with pytest.raises(JobSpecError, match=message) as caught:
        load_job(job_file, ENV)

    error = caught.value
    assert error.exit_code == 2
    assert "\n" not in str(error)
    assert str(job_file) in str(error)
    assert any(p == path and re.search(message, m) for p, m in error.problems), error.problems
    if path:
        assert f"{path}: " in str(error)
    assert SECRET not in str(error)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Problems in several sections, structural and semantic, are all reported in one error."""
    text = job(
        name=NAME + "colour = 1\n",
        source='[source]\nauth = "nobody"\nregion = "KR1"\n',
        targets=TARGET * 2,
        extra='[select]\nsize_min = "12XB"\nvisibility = ["public"]\n'
        '[transfer]\nretries = "5"\nbandwidth = "fast"\n'
        '[run]\nmax_runtime = "forever"\n',
    )
    with pytest.raises(JobSpecError, match="8 problems") as caught:
        load_job(write(tmp_path, text), ENV)

    paths = [path for path, _ in caught.value.problems]
    assert sorted(paths) == sorted(
        [
            "colour",
            "source.auth",
            "targets[1]",
            "select.size_min",
            "select.visibility",
            "transfer.retries",
            "transfer.bandwidth",
            "run.max_runtime",
        ]
    )
    assert "\n" not in str(caught.value)


def test_parse_job_has_no_path() -> None:
    """parse_job works on a parsed document and leaves path unset; load_job fills it in."""
    spec = load_minimal()
    assert spec.path is None
    assert spec.name == "minimal"


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_example_jobs_are_valid(path: Path) -> None:
    """Every example job in jobs/ passes the validator (secrets are not needed to validate)."""
    spec = load_job(path, {}, need_secrets=False)
    assert spec.path == path
    if path.name == "dr-mirror-prune.toml":
        assert (spec.prune.enabled, spec.prune.max_delete, spec.prune.max_shrink) == (True, 20, 0.3)


def test_from_env_is_the_envvars_cloud(tmp_path: Path) -> None:
    """``from_env = true`` (openstacksdk's spelling) is ``cloud = "envvars"``: the OS_* variables."""
    spec = load_job(write(tmp_path, job(auth='\n[auth.src]\nfrom_env = true\ninterface = "internal"\n')), ENV)
    profile = spec.auth["src"]
    assert (profile.kind, profile.cloud, profile.interface) == ("cloud", "envvars", "internal")


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ('from_env = true\ncloud = "onprem"', "auth.src: use either cloud"),
        ('from_env = "yes"', "auth.src.from_env: expected a boolean, got a string"),
        ("from_env = false", "auth.src: needs tenant_id, username and password_env"),
        ('from_env = true\nusername = "u"', "auth.src.username: not allowed with cloud"),
    ],
)
def test_bad_from_env(tmp_path: Path, auth: str, expected: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        load_job(write(tmp_path, job(auth=f"\n[auth.src]\n{auth}\n")), ENV)
    assert expected in str(caught.value)


def test_relative_paths_are_relative_to_the_job_file(tmp_path: Path) -> None:
    """Every relative path of a job file (journal_dir, the default one included, spool_dir, metrics_file,
    ca_bundle) is taken from the job file's directory, whatever the working directory; absolute and ``~`` paths
    are kept as they are."""
    jobs = tmp_path / "etc" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "ca.pem").write_text("not checked here")
    extra = ('\n[transfer]\nspool_dir = "spool"\n[run]\njournal_dir = "../state/j"\n'
             'metrics_file = "/var/lib/node_exporter/imgmig.prom"\nca_bundle = "ca.pem"\n')  # fmt: skip
    (jobs / "job.toml").write_text(job(extra=extra))
    spec = load_job(jobs / "job.toml", ENV)
    assert spec.run.journal_dir == tmp_path / "etc" / "state" / "j"
    assert spec.transfer.spool_dir == jobs / "spool"
    assert spec.run.metrics_file == Path("/var/lib/node_exporter/imgmig.prom")
    assert spec.run.ca_bundle == jobs / "ca.pem"
    (jobs / "default.toml").write_text(job())
    assert load_job(jobs / "default.toml", ENV).run.journal_dir == jobs / "state" / "minimal"


def test_a_job_from_standard_input_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    """A job read from standard input (``/dev/stdin``) has no directory of its own: its relative paths, the default
    journal_dir included, are taken from the working directory."""
    code = "from pipeline.config import load_job; print(load_job('/dev/stdin', need_secrets=False).run.journal_dir)"
    result = subprocess.run([sys.executable, "-c", code], input=job(), capture_output=True, text=True, cwd=tmp_path,
                            check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "state" / "minimal")
