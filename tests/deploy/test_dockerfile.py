"""The Dockerfile, read as text, agrees with the chart's default render.

No Docker engine is needed: the image cannot be built here, so these checks keep the two sides
(image and chart) from drifting apart: user, port, entry point, and a pinned, tool-free base.
"""

from __future__ import annotations

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


def test_multi_stage_build_installs_a_wheel_into_a_venv() -> None:
    builder, *_ = stages()
    assert len(stages()) == 2
    assert builder.name == "builder"
    assert builder.base.startswith("python:3.11")
    run = " ".join(builder.all("RUN"))
    assert "pip wheel" in run
    assert "python -m venv /opt/iotbridge" in run
    assert "/opt/iotbridge/bin/pip install /wheels/" in run
    assert final().all("COPY") == ["--from=builder /opt/iotbridge /opt/iotbridge"]


def test_base_images_are_pinned_to_a_patch_release() -> None:
    for stage in stages():
        image, sep, tag = stage.base.partition(":")
        assert sep, f"{stage.base} has no tag"
        assert tag != "latest"
        assert re.fullmatch(r"3\.11\.\d+-slim-[a-z]+", tag), f"{stage.base} is not pinned"
        assert image == "python"
    assert len({stage.base for stage in stages()}) == 1, "builder and runtime differ"


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


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests", ".mypy_cache", ".pytest_cache", ".ruff_cache"} <= ignored
    copied = {word for args in stages()[0].all("COPY") for word in args.split()[:-1]}
    assert not copied & ignored, "the build copies something the context leaves out"
