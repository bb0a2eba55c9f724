"""The lock files the image is built from agree with pyproject.toml, and pin every file by hash.

The Dockerfile installs with `pip install --require-hashes --no-deps -r ...`: whatever the locks
leave out is missing from the image, and whatever they hold beyond the declared dependencies and
what those pull in is shipped for nothing. scripts/lock regenerates them; these tests fail until
it has been run after a change to the dependencies.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# How pip-compile names the sources of the two lists in its "# via" annotations.
RUNTIME_SOURCE = "iotbridge (pyproject.toml)"
BUILD_SOURCE = "iotbridge (pyproject.toml::build-system.requires)"


@dataclass
class Pin:
    requirement: Requirement
    hashes: list[str]
    via: set[str] = field(default_factory=set)

    @property
    def name(self) -> NormalizedName:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        (spec,) = self.requirement.specifier
        assert spec.operator == "==", f"{self.requirement} is not pinned"
        assert "*" not in spec.version, f"{self.requirement} is not pinned"
        return spec.version


def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """A pip-compile output file: each requirement with its hashes and its `# via` sources."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pins: dict[NormalizedName, Pin] = {}
    last: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if line.startswith("#"):  # the header, at the left margin
            continue
        if stripped.startswith("#"):  # "# via x", or "# via" then "#   x" lines
            assert last is not None, f"{path.name}: annotation before any requirement"
            source = stripped.lstrip("#").strip().removeprefix("via").strip()
            if source:
                last.via.add(source)
            continue
        assert not line[0].isspace(), f"{path.name}: stray line {line!r}"
        spec, _, options = line.partition(" --")
        requirement = Requirement(spec)
        last = Pin(requirement, HASH.findall("--" + options))
        assert last.name not in pins, f"{path.name}: {last.name} twice"
        pins[last.name] = last
    return pins


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return data


def declared(requirements: list[str]) -> dict[NormalizedName, Requirement]:
    parsed = [Requirement(text) for text in requirements]
    return {canonicalize_name(r.name): r for r in parsed}


# Each lock, the source pip-compile names for it, and where pyproject.toml lists what it locks.
LOCKS = {
    "runtime": (RUNTIME_LOCK, RUNTIME_SOURCE, ("project", "dependencies")),
    "build": (BUILD_LOCK, BUILD_SOURCE, ("build-system", "requires")),
}


@pytest.mark.parametrize("which", list(LOCKS))
def test_every_requirement_is_pinned_with_a_hash(which: str) -> None:
    path, _, _ = LOCKS[which]
    pins = read_lock(path)
    assert pins
    for pin in pins.values():
        assert pin.version
        assert pin.hashes, f"{path.name}: {pin.name} has no --hash"
        assert not pin.requirement.url, f"{path.name}: {pin.name} comes from a URL"
    # Nothing but requirements and their hashes: no index, find-links or editable lines.
    options = re.findall(r"(?m)^\s*(-[-a-z]*)", path.read_text(encoding="utf-8"))
    assert set(options) <= {"--hash"}


@pytest.mark.parametrize("which", list(LOCKS))
def test_lock_holds_exactly_the_declared_dependencies(which: str) -> None:
    path, source, (table, key) = LOCKS[which]
    pins = read_lock(path)
    wanted = declared(pyproject()[table][key])
    direct = {name for name, pin in pins.items() if source in pin.via}
    assert direct == set(wanted), f"{path.name} is stale: run scripts/lock"
    for name, requirement in wanted.items():
        pin = pins[name]
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{path.name}: {name}=={pin.version} is outside {requirement.specifier}; "
            "run scripts/lock"
        )
        assert str(pin.requirement.marker) == str(requirement.marker), name
    # Everything else is there because a locked package needs it: nothing left over.
    for name, pin in pins.items():
        assert pin.via, f"{path.name}: {name} says nothing of why it is there"
        assert pin.via <= {source} | set(pins), f"{path.name}: {name} via {pin.via}"


def test_runtime_lock_has_no_development_tools() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    tools = {name for group in extras.values() for name in declared(group)}
    runtime = declared(pyproject()["project"]["dependencies"])
    assert not (set(read_lock(RUNTIME_LOCK)) & tools) - set(runtime)
    assert not set(read_lock(RUNTIME_LOCK)) & {"pip", "setuptools", "wheel"}


def test_locks_name_the_script_that_writes_them() -> None:
    script = ROOT / "scripts" / "lock"
    assert os.access(script, os.X_OK)
    text = script.read_text(encoding="utf-8")
    assert "--generate-hashes" in text
    for path in (RUNTIME_LOCK, BUILD_LOCK):
        assert path.name in text
        header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert "#    scripts/lock" in header.splitlines()
