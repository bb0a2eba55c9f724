"""The package tree is the architecture, and this test keeps it so: every import goes down the
layers (or stays inside its own package), the protocol layers know nothing of the bridge's
contract, the features do not import each other, and there is no import cycle.

    errors, mqtt.names              the error tree; MQTT's own topic rules
    ops                             metrics, probes, logs
    config                          configuration
    mqtt, coap                      the protocol seams (paho-mqtt, aiocoap)
    contract                        topics, payloads, the command table, the documents
    core                            routing, dispatch, dedup, outbox, breaker, supervision
    pager, schedules, homeassistant the features
    site → app → cli                composition; dev and sim only from the CLI
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("bridge.errors", "bridge.mqtt.names"),
    ("bridge.ops",),
    ("bridge.config", "bridge.config_check"),
    ("bridge.mqtt", "bridge.coap"),
    ("bridge.contract",),
    ("bridge.core",),
    ("bridge.pager", "bridge.schedules", "bridge.homeassistant"),
    ("bridge.site",),
    ("bridge.app",),
    ("bridge.cli", "bridge.__main__", "bridge.dev", "bridge.sim", "bridge"),
)
# Modules of one layer that are one component (may import each other).
TOGETHER = {"bridge.config_check": "bridge.config"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def place(module: str) -> tuple[int, str]:
    """(layer, component) of a module: the longest entry of LAYERS that contains it."""
    best: tuple[int, str] | None = None
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (layer, entry)
    assert best is not None, module
    layer, entry = best
    return layer, TOGETHER.get(entry, entry)


def runtime_imports(path: Path) -> set[str]:
    """The bridge modules `path` imports when it runs (not those under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            checking |= {id(child) for child in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_module = ROOT / (candidate.replace(".", "/") + ".py")
                as_package = ROOT / candidate.replace(".", "/") / "__init__.py"
                if as_module.exists() or as_package.exists():
                    found.add(candidate)
                elif node.module != "bridge":
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bridge")}
    return found


MODULES = {module_name(p): p for p in sorted((ROOT / "bridge").rglob("*.py"))}
GRAPH = {name: runtime_imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    layer, component = place(module)
    wrong = []
    for imported in sorted(GRAPH[module]):
        their_layer, their_component = place(imported)
        if their_layer > layer or (their_layer == layer and their_component != component):
            wrong.append(imported)
    # The top layer (CLI, dev tools, simulators) may use anything; the runtime never uses it.
    if layer < len(LAYERS) - 1:
        assert not wrong, f"{module} (layer {layer}) imports {wrong}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for imported in GRAPH.get(name, ()):
            if imported not in GRAPH:
                continue
            if state.get(imported) == 1:
                cycle = [*path[path.index(imported) :], imported]
                raise AssertionError(" -> ".join(cycle))
            if imported not in state:
                visit(imported)
        path.pop()
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name)


def test_the_protocol_seams_own_their_libraries() -> None:
    """paho-mqtt only in bridge.mqtt, aiocoap only in bridge.coap (client) and the simulator,
    httpx only in the Sensaphone client and transport, stamina only in the retry policy."""
    owners = {
        "paho": ("bridge.mqtt",),
        "aiocoap": ("bridge.coap", "bridge.sim.pager"),
        "httpx": ("bridge.schedules",),
        "stamina": ("bridge.core.retry",),
        "tenacity": (),
    }
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        } | {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        for library, allowed in owners.items():
            if library in used:
                assert name.startswith(allowed), f"{name} imports {library}"
