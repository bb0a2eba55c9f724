"""The Dockerfile, read as text, agrees with the chart's default render.

No Docker engine is needed: the image cannot be built here, so these checks keep the two sides
(image and chart) from drifting apart: user, port, entry point, and a base pinned by digest. They
also hold the supply chain: dependencies only from the hashed lock files (tests/deploy/test_lock.py
holds those to pyproject.toml), and no pip, setuptools or wheel left in the image.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.test_helm import container, env_of, pod_spec, render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cc1", "clang", "python3-dev")
LOCKS = {"requirements.lock": "/opt/iotbridge", "requirements-build.lock": "/opt/build"}
INSTALLERS = {"pip", "setuptools", "wheel"}
# python:<3.11 patch release>-slim-<Debian release>@sha256:<digest>
BASE = re.compile(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage from {self.base}"
        return found[-1]


def stages() -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base=words[0], name=name))
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, " ".join(args.split())))
    return result


def final() -> Stage:
    return stages()[-1]


def env_vars(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def commands(stage: Stage) -> list[list[str]]:
    """Every shell command of the stage's RUN lines, split into words, in order."""
    return [
        shlex.split(part)
        for args in stage.all("RUN")
        for part in re.split(r"&&|;", args)
        if part.strip()
    ]


def pip_args(words: list[str]) -> list[str] | None:
    """The arguments of a pip command (`.../pip ...` or `python -m pip ...`), else None."""
    if words and words[0].rpartition("/")[2] == "pip":
        return words[1:]
    if len(words) > 2 and words[1:3] == ["-m", "pip"]:
        return words[3:]
    return None


def pip_commands(stage: Stage) -> list[tuple[str, list[str]]]:
    """(interpreter or pip path, arguments) of each pip command in the stage."""
    found = []
    for words in commands(stage):
        args = pip_args(words)
        if args is not None:
            found.append((words[0], args))
    return found


def test_multi_stage_build_installs_a_wheel_into_a_venv() -> None:
    builder, *_ = stages()
    assert len(stages()) == 2
    assert builder.name == "builder"
    assert builder.base.startswith("python:3.11")
    run = " ".join(builder.all("RUN"))
    assert "python -m venv /opt/iotbridge" in run
    assert "/opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in run
    assert "/opt/iotbridge/bin/pip install --no-deps /wheels/*.whl" in run
    assert final().all("COPY") == ["--from=builder /opt/iotbridge /opt/iotbridge"]


def test_base_images_are_pinned_by_digest_to_a_patch_release() -> None:
    for stage in stages():
        assert BASE.fullmatch(stage.base), f"{stage.base} is not a patch release pinned by digest"
    assert len({stage.base for stage in stages()}) == 1, "builder and runtime differ"
    # The tag is kept beside the digest: it says what the digest is and how to refresh it.
    header = DOCKERFILE.read_text(encoding="utf-8").split("\nFROM ", 1)[0]
    tag = stages()[0].base.partition("@")[0]
    assert f"docker buildx imagetools inspect {tag}" in header


def test_dependencies_come_from_the_locks_with_hashes() -> None:
    builder = stages()[0]
    copied = {word for args in builder.all("COPY") for word in args.split()[:-1]}
    assert set(LOCKS) <= copied
    installs = {}
    for where, args in pip_commands(builder):
        if args[0] != "install":
            continue
        assert "--no-deps" in args, f"{where} {args}: the lock is the whole of the dependencies"
        if "-r" in args:
            assert "--require-hashes" in args, f"{where} {args}"
            assert "--only-binary" in args, f"{where} {args}: an sdist build is not checked"
            assert args[args.index("--only-binary") + 1] == ":all:"
            installs[args[args.index("-r") + 1]] = where.removesuffix("/bin/pip")
        else:  # only the wheel the build itself made, from the source tree
            assert [a for a in args[1:] if not a.startswith("-")] == ["/wheels/*.whl"]
    assert installs == LOCKS
    # The project's wheel is built with the locked setuptools, not a freshly fetched one.
    (wheel,) = [(where, args) for where, args in pip_commands(builder) if args[0] == "wheel"]
    assert wheel[0] == f"{LOCKS['requirements-build.lock']}/bin/pip"
    assert "--no-build-isolation" in wheel[1]
    assert "--no-deps" in wheel[1]


def uninstalled(args: list[str]) -> set[str]:
    assert args[:2] == ["uninstall", "-y"], args
    return set(args[2:])


def test_no_pip_is_left_in_the_image() -> None:
    builder = stages()[0]
    venv = [(where, args) for where, args in pip_commands(builder) if "/opt/iotbridge/" in where]
    # pip check last confirms the lock was complete; then the venv's own installers go.
    assert [args[0] for _, args in venv][-3:] == ["install", "check", "uninstall"]
    assert venv[-1][0] == "/opt/iotbridge/bin/python"
    assert uninstalled(venv[-1][1]) == INSTALLERS
    # The base image's pip (and ensurepip's bundled copies), before anything else runs.
    first, *rest = pip_commands(final())
    assert first[0] == "python"
    assert uninstalled(first[1]) == INSTALLERS
    assert not rest, "pip is used after it was removed"
    assert ["rm", "-rf", "/usr/local/lib/python3.11/ensurepip/_bundled"] in commands(final())
    # Only the venv crosses over; the build venv (with setuptools) stays behind.
    assert all("/opt/build" not in args for args in final().all("COPY"))


def test_final_stage_has_no_build_tools() -> None:
    commands = " ".join(final().all("RUN")).split()
    assert not [word for word in commands if word in BUILD_TOOLS]
    assert "apt-get" not in commands


def test_user_matches_the_pods_security_context() -> None:
    docs = render()
    pod = pod_spec(docs)["securityContext"]
    ctx = container(docs)["securityContext"]
    uid, _, gid = final().last("USER").partition(":")
    assert int(uid) == pod["runAsUser"] == ctx["runAsUser"]
    assert int(gid) == pod["runAsGroup"] == ctx["runAsGroup"] == pod["fsGroup"]
    run = " ".join(final().all("RUN"))
    assert f"groupadd --system --gid {gid} iotbridge" in run
    assert f"useradd --system --uid {uid} --gid {gid}" in run
    assert run.split("useradd", 1)[1].split("&&")[0].split()[-1] == "iotbridge"


def test_exposed_port_is_the_container_and_probe_port() -> None:
    docs = render()
    c = container(docs)
    (exposed,) = final().all("EXPOSE")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(exposed) == ports["metrics"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = c[probe]["httpGet"]["port"]
        assert ports.get(port, port) == int(exposed)
    image_addr = env_vars(final())["IOTBRIDGE_HTTP_ADDR"]
    assert image_addr == env_of(docs)["IOTBRIDGE_HTTP_ADDR"]["value"]
    assert image_addr.rpartition(":")[2] == exposed


def test_entrypoint_runs_iotbridge_run() -> None:
    entrypoint = json.loads(final().last("ENTRYPOINT"))
    cmd = json.loads(final().last("CMD"))
    c = container(render())
    assert "command" not in c, "the chart keeps the image's entry point"
    assert entrypoint + c.get("args", cmd) == ["iotbridge", "run"]
    assert entrypoint + cmd == ["iotbridge", "run"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["iotbridge"] == "bridge.cli:main"
    assert "/opt/iotbridge/bin" in env_vars(final())["PATH"].split(":")


def ignored(path: str, patterns: set[str]) -> bool:
    """Whether .dockerignore leaves `path` (or the folder it is in) out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.rstrip("/").removeprefix("**/"))
        or fnmatch.fnmatch(prefix, pattern.rstrip("/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not any(p.startswith("!") for p in patterns), "exceptions are not read here"
    assert {".venv", ".git", "tests", ".mypy_cache", ".pytest_cache", ".ruff_cache"} <= patterns
    copied = {word for args in stages()[0].all("COPY") for word in args.split()[:-1]}
    assert set(LOCKS) <= copied
    assert not [path for path in copied if ignored(path, patterns)], "the build needs these"
    assert all((ROOT / path).exists() for path in copied)
    assert ignored("tests/deploy/test_dockerfile.py", patterns)
    assert ignored("bridge/__pycache__/app.cpython-311.pyc", patterns)
