"""The Helm chart, rendered and linted by Helm's own library (helm-python-sdk, Helm v4).

Every rendered manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate);
the assertions are on what a cluster operator would see: probes, security context, how secrets
reach the pod, the shared subscription group, and the alert rules' metric names.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge import config

CHART = Path(__file__).resolve().parents[2] / "helm" / "iotbridge"
PRODUCTION = CHART / "ci" / "production-values.yaml"
RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
KUBE_VERSION = "1.35.0"
RELEASE = "iotbridge"
# Custom resources of the Prometheus Operator: not in the core schemas, checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
EXPORTED_METRICS = {
    "iotbridge_commands_total",
    "iotbridge_command_duration_seconds_bucket",
    "iotbridge_command_duration_seconds_count",
    "iotbridge_command_duration_seconds_sum",
    "iotbridge_upstream_request_duration_seconds_bucket",
    "iotbridge_upstream_request_duration_seconds_count",
    "iotbridge_upstream_request_duration_seconds_sum",
    "iotbridge_mqtt_connected",
    "iotbridge_mqtt_reconnects_total",
    "iotbridge_outbound_dropped_total",
    "iotbridge_commands_in_flight",
    "iotbridge_pager_guests_served",
    "iotbridge_pager_percent_late",
    "iotbridge_pager_percent_on_time",
    "iotbridge_pager_average_time_served_seconds",
    "iotbridge_pager_sessions",
    "iotbridge_sensaphone_logins_total",
    "iotbridge_upstream_retries_total",
}
# Made-up passwords that must never show up outside the Secret.
MQTT_SECRET = "mqtt-s3cret-value"
SENSAPHONE_SECRET = "sensaphone-s3cret-value"
WITH_PASSWORDS = {
    "mqtt": {"password": MQTT_SECRET, "username": "bridge"},
    "sensaphone": {"user": "ops@example.com", "password": SENSAPHONE_SECRET},
}
# Several sites in one release: two passwords in the chart's Secrets (one site name that Kubernetes
# names cannot hold as it is), one in the user's own Secret, and a site without Sensaphone.
NORTH_SECRET = "north-s3cret-value"
SOUTH_SECRET = "south-s3cret-value"
SITES_DIR = "/etc/iotbridge/sites"
WITH_SITES: dict[str, Any] = {
    "config": {
        # Every section the bridge reads is accepted by the chart's schema, not only some.
        "event_loop": "asyncio",
        "discovery": {"enabled": True, "node": "acme", "name": "Acme"},
        "limits": {"rate": 200, "burst": 400, "lane_depth": 8},
        "sites": [
            {
                "name": "north",
                "pager": {"url": "coap://t7470.north.lan:5683", "max_number": 250},
                "sensaphone": {
                    "user": "north@example.com",
                    "schedules": {"28487": {"kind": "default_schedule", "device_id": 1234}},
                },
            },
            {
                "name": "South_2",
                "topic_prefix": "restaurants/south",
                "pager": {"url": "coap://t7470.south.lan:5683"},
                "sensaphone": {"user": "south@example.com"},
            },
            {
                "name": "west",
                "pager": {"url": "coap://t7470.west.lan:5683"},
                "sensaphone": {"user": "west@example.com"},
            },
            {"name": "east", "pager": {"url": "coap://t7470.east.lan:5683"}, "max_in_flight": 20},
        ],
    },
    "sitePasswords": {
        "north": {"password": NORTH_SECRET},
        "South_2": {"password": SOUTH_SECRET},
        "west": {"existingSecret": "west-sensaphone", "key": "password"},
    },
}

Manifest = dict[str, Any]


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))
    return values


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every Kubernetes object the chart renders for these values (NOTES.txt left out)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=values or {}, name=RELEASE, namespace="bridge")
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def only(docs: list[Manifest], kind: str) -> Manifest:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[Manifest]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def pod_spec(docs: list[Manifest]) -> Manifest:
    spec: Manifest = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest]) -> Manifest:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    first: Manifest = containers[0]
    return first


def env_of(docs: list[Manifest]) -> dict[str, Manifest]:
    return {item["name"]: item for item in container(docs).get("env", [])}


def mount_of(docs: list[Manifest], path: str) -> tuple[Manifest, Manifest]:
    """The volume mount that holds `path` and the volume behind it."""
    mounts = [m for m in container(docs)["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{path} is not under exactly one mount"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    return mounts[0], volumes[mounts[0]["name"]]


def all_values(docs: list[Manifest]) -> Iterator[str]:
    """Every string anywhere in the manifests, for "this never appears" checks."""
    stack: list[Any] = list(docs)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            yield item


CASES = {
    "default": None,
    "production": production_values(),
    "passwords": WITH_PASSWORDS,
    "sites": WITH_SITES,
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(case: str) -> list[Manifest]:
    return render(CASES[case])


# Helm itself: lint and schema


def test_lint_has_no_errors_or_warnings(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is info (only "icon is recommended": the project has no icon); 2 warns, 3 errs.
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert findings == []


def test_chart_metadata() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.metadata["apiVersion"] == "v2"
        assert chart.metadata["appVersion"] == "0.1.0"
        assert chart.schema is not None
        assert chart.schema["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replica": 3}, "replica"),
        ({"mqtt": {"url": "mqtt://user:pw@broker:1883"}}, "url"),
        ({"mqtt": {"url": "http://broker"}}, "url"),
        ({"mqtt": {"url": "wss://user:pw@broker/mqtt"}}, "url"),
        ({"config": {"mqtt": {"password": "x"}}}, "/config/mqtt/password"),
        ({"config": {"sensaphone": {"password": "x"}}}, "/config/sensaphone/password"),
        ({"config": {"loglevel": "debug"}}, "loglevel"),
        ({"terminationGracePeriodSeconds": 5}, "terminationGracePeriodSeconds"),
        ({"serviceMonitor": {"enable": True}}, "enable"),
        (
            {"config": {"sites": [{"name": "north", "sensaphone": {"password": "x"}}]}},
            "/config/sites/0/sensaphone/password",
        ),
        ({"config": {"sites": [{"name": "north one"}]}}, "/config/sites/0/name"),
        ({"sitePasswords": {"north": {"pasword": "x"}}}, "pasword"),
        ({"sitePasswords": {"north": {}}}, "missing property 'password'"),
        ({"sitePasswords": {"north": {"password": ""}}}, "/sitePasswords/north/password"),
        ({"sitePasswords": {"north": {"password": "x", "existingSecret": "s"}}}, "existingSecret"),
        ({"sitePasswords": {"north": {"password": "x", "key": "k"}}}, "/sitePasswords/north/key"),
        ({"sitePasswords": {"north.1": {"password": "x"}}}, "north.1"),
    ],
)
def test_schema_refuses_typos_and_misplaced_secrets(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(values)


@pytest.mark.parametrize("url", ["ws://broker:8080/mqtt", "wss://broker/mqtt", "ws://broker"])
def test_websocket_urls_are_accepted(url: str) -> None:
    env = {
        e["name"]: e.get("value")
        for doc in render({"mqtt": {"url": url}})
        if doc["kind"] == "Deployment"
        for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["IOTBRIDGE_MQTT_URL"] == url


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"mqtt": {"tls": {"enabled": True}}}, "secretName"),
        (
            {"mqtt": {"url": "mqtt://broker:1883", "tls": {"enabled": True, "secretName": "t"}}},
            "mqtts:// or wss://",
        ),
    ],
)
def test_inconsistent_tls_settings_fail_the_render(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=complaint):
        render(values)


# Kubernetes schemas


def test_every_manifest_is_valid_kubernetes(docs: list[Manifest]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # checked in test_custom_resources_have_the_operator_shape
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_custom_resources_have_the_operator_shape() -> None:
    docs = render(production_values())
    service = only(docs, "Service")
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["jobLabel"] in service["metadata"]["labels"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert {"alert", "expr", "for"} <= set(item)
            assert re.fullmatch(r"\d+[smh]", item["for"])


# What the pods look like


def test_probes_hit_livez_and_readyz_on_the_metrics_port(docs: list[Manifest]) -> None:
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9464}
    assert env_of(docs)["IOTBRIDGE_HTTP_ADDR"]["value"] == "0.0.0.0:9464"
    paths = {
        probe: (c[probe]["httpGet"]["path"], c[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/livez", "metrics"),
        "livenessProbe": ("/livez", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    service = only(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_pods_meet_the_restricted_pod_security_standard(docs: list[Manifest]) -> None:
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(docs)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["runAsNonRoot"] is True
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx.get("privileged", False) is False
    assert "add" not in ctx["capabilities"]
    assert pod_spec(docs).get("hostNetwork", False) is False
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    scratch = [m["name"] for m in container(docs)["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108 - asserting the mount, not using it
    assert [sorted(volumes[name]) for name in scratch] == [["emptyDir", "name"]]
    assert all("hostPath" not in v for v in pod_spec(docs)["volumes"])


def test_resources_and_termination_grace(docs: list[Manifest]) -> None:
    resources = container(docs)["resources"]
    assert resources["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert resources["limits"]["memory"] == "128Mi"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= 30


def test_config_is_mounted_from_the_configmap(docs: list[Manifest]) -> None:
    path = env_of(docs)["IOTBRIDGE_CONFIG"]["value"]
    assert path == "/etc/iotbridge/config.yaml"
    mounts = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1
    volume = {v["name"]: v for v in pod_spec(docs)["volumes"]}[mounts[0]["name"]]
    configmap = only(docs, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert mounts[0]["subPath"] in configmap["data"]


# Secrets


def test_no_secret_value_in_env_or_configmap() -> None:
    docs = render(WITH_PASSWORDS)
    for item in env_of(docs).values():
        assert "secretKeyRef" not in item.get("valueFrom", {}), "secrets go in as files only"
        assert MQTT_SECRET not in item.get("value", "")
        assert SENSAPHONE_SECRET not in item.get("value", "")
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        for text in all_values([doc]):
            assert MQTT_SECRET not in text
            assert SENSAPHONE_SECRET not in text
    secret = only(docs, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"mqtt-password": MQTT_SECRET, "sensaphone-password": SENSAPHONE_SECRET}


@pytest.mark.parametrize(
    ("values", "secret_name"),
    [(WITH_PASSWORDS, "iotbridge"), (production_values(), "iotbridge-credentials")],
)
def test_passwords_are_files_from_the_secret(values: dict[str, Any], secret_name: str) -> None:
    docs = render(values)
    env = env_of(docs)
    for name, key in (
        ("IOTBRIDGE_MQTT_PASSWORD_FILE", "mqtt-password"),
        ("IOTBRIDGE_SENSAPHONE_PASSWORD_FILE", "sensaphone-password"),
    ):
        path = env[name]["value"]
        assert path == f"/etc/iotbridge/secrets/{key}"
        mount, volume = mount_of(docs, path)
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == secret_name
    assert "IOTBRIDGE_MQTT_PASSWORD" not in env
    assert "IOTBRIDGE_SENSAPHONE_PASSWORD" not in env


def test_existing_secret_replaces_the_charts_own() -> None:
    docs = render(production_values())
    assert "Secret" not in kinds(docs)


def test_without_passwords_nothing_is_mounted() -> None:
    docs = render()
    env = env_of(docs)
    assert "Secret" not in kinds(docs)
    assert not any(name.endswith("PASSWORD_FILE") for name in env)
    assert all(m["name"] != "secrets" for m in container(docs)["volumeMounts"])


def test_broker_tls_files_come_from_the_tls_secret() -> None:
    docs = render(production_values())
    env = env_of(docs)
    assert env["IOTBRIDGE_MQTT_URL"]["value"].startswith("mqtts://")
    for name, file in (
        ("IOTBRIDGE_MQTT_CA_FILE", "ca.crt"),
        ("IOTBRIDGE_MQTT_CERT_FILE", "tls.crt"),
        ("IOTBRIDGE_MQTT_KEY_FILE", "tls.key"),
    ):
        assert env[name]["value"] == f"/etc/iotbridge/tls/{file}"
        _, volume = mount_of(docs, env[name]["value"])
        assert volume["secret"]["secretName"] == "iotbridge-mqtt-tls"
    assert not any(
        name.startswith("IOTBRIDGE_MQTT_") and name.endswith("_FILE") for name in env_of(render())
    )


# Several sites: a Secret per site


def rendered_sites(docs: list[Manifest]) -> list[dict[str, Any]]:
    sites: list[dict[str, Any]] = yaml.safe_load(only(docs, "ConfigMap")["data"]["config.yaml"])[
        "sites"
    ]
    return sites


def test_each_site_password_is_a_file_the_config_names() -> None:
    docs = render(WITH_SITES)
    sites = rendered_sites(docs)
    files = {site["name"]: site.get("sensaphone", {}).get("password_file") for site in sites}
    assert files == {
        "north": f"{SITES_DIR}/north/sensaphone-password",
        "South_2": f"{SITES_DIR}/South_2/sensaphone-password",
        "west": f"{SITES_DIR}/west/sensaphone-password",
        "east": None,
    }
    for path in filter(None, files.values()):
        mount, volume = mount_of(docs, path)
        assert mount["readOnly"] is True
        assert volume["projected"]["defaultMode"] == 0o440
    _, volume = mount_of(docs, f"{SITES_DIR}/north/sensaphone-password")
    sources = {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert sources == {
        "north/sensaphone-password": ("iotbridge-site-north", "sensaphone-password"),
        "South_2/sensaphone-password": ("iotbridge-site-south-2", "sensaphone-password"),
        "west/sensaphone-password": ("west-sensaphone", "password"),
    }
    # Apart from the path the chart adds, each site is rendered as the user wrote it.
    for site in sites:
        site.get("sensaphone", {}).pop("password_file", None)
    assert sites == WITH_SITES["config"]["sites"]


def test_site_passwords_are_only_in_their_secrets() -> None:
    docs = render(WITH_SITES)
    for item in env_of(docs).values():
        assert "secretKeyRef" not in item.get("valueFrom", {})
        assert NORTH_SECRET not in item.get("value", "")
        assert SOUTH_SECRET not in item.get("value", "")
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        for text in all_values([doc]):
            assert NORTH_SECRET not in text
            assert SOUTH_SECRET not in text
    secrets = {
        doc["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
        for doc in docs
        if doc["kind"] == "Secret"
    }
    assert secrets == {
        "iotbridge-site-north": {"sensaphone-password": NORTH_SECRET},
        "iotbridge-site-south-2": {"sensaphone-password": SOUTH_SECRET},
    }


def with_sites(**changes: Any) -> dict[str, Any]:
    """WITH_SITES with the first site's fields and the site passwords replaced."""
    values = copy.deepcopy(WITH_SITES)
    passwords = changes.pop("sitePasswords", None)
    if passwords is not None:
        values["sitePasswords"] = passwords
    values["config"]["sites"][0].update(changes)
    return values


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            {"sitePasswords": {"north": {"password": "x"}}},
            'sitePasswords.north: config.sites has no site named "north"',
        ),
        (
            with_sites(sitePasswords={"nort": {"password": "x"}}),
            'sitePasswords.nort: config.sites has no site named "nort"',
        ),
        (
            with_sites(name="North"),
            'sitePasswords.north: config.sites has no site named "north"',
        ),
        (with_sites(sensaphone=None), 'site "north" in config.sites has no sensaphone section'),
        (
            with_sites(sitePasswords={"east": {"password": "x"}}),
            'site "east" in config.sites has no sensaphone section',
        ),
        (
            with_sites(sensaphone={"user": "u", "password_file": "/run/north"}),
            "sets sensaphone.password_file too",
        ),
        (
            with_sites(
                name="south-2",
                sitePasswords={"south-2": {"password": "a"}, "South_2": {"password": "b"}},
            ),
            'sites "South_2" and "south-2" would share the Secret iotbridge-site-south-2',
        ),
    ],
)
def test_site_passwords_that_fit_no_site_fail_the_render(
    values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        render(values)


def test_a_site_password_in_the_configmap_fails_without_the_schema_too(tmp_path: Path) -> None:
    """`helm install --skip-schema-validation` must not put a password in the ConfigMap."""
    chart = shutil.copytree(CHART, tmp_path / "iotbridge")
    (chart / "values.schema.json").unlink()
    values = with_sites(sensaphone={"user": "u", "password": NORTH_SECRET})
    with helm.Chart.load(chart) as loaded, pytest.raises(helm.HelmRenderError) as failed:
        loaded.render(values=values, name=RELEASE, namespace="bridge")
    assert "config.sites[0].sensaphone.password: the ConfigMap is no place" in str(failed.value)
    assert NORTH_SECRET not in str(failed.value)


def pod_annotations(values: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = only(render(values), "Deployment")["spec"]["template"][
        "metadata"
    ]["annotations"]
    return annotations


def test_a_changed_site_password_rolls_the_pods() -> None:
    before = pod_annotations(WITH_SITES)
    changed = copy.deepcopy(WITH_SITES)
    changed["sitePasswords"]["South_2"]["password"] = "another"
    after = pod_annotations(changed)
    assert after["checksum/secret"] != before["checksum/secret"]
    assert after["checksum/config"] == before["checksum/config"]


def test_without_site_passwords_the_secret_checksum_is_unchanged() -> None:
    """Upgrading the chart must not roll the pods of a release that gives no site password."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=WITH_PASSWORDS, name=RELEASE, namespace="bridge")
    secret = rendered[f"{RELEASE}/templates/secret.yaml"]
    expected = hashlib.sha256(secret.encode()).hexdigest()
    assert pod_annotations(WITH_PASSWORDS)["checksum/secret"] == expected
    assert "Secret" not in kinds(render({"config": {"sites": WITH_SITES["config"]["sites"]}}))


# Scaling out


def test_replicas_share_commands_and_keep_their_own_client_id() -> None:
    docs = render(production_values())
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    env = env_of(docs)
    assert env["IOTBRIDGE_MQTT_SHARED_GROUP"]["value"] == "iotbridge"
    client_id = env["IOTBRIDGE_MQTT_CLIENT_ID"]
    assert "value" not in client_id
    assert client_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize(
    ("values", "group"),
    [
        ({}, None),
        ({"replicas": 1, "mqtt": {"sharedGroup": "site1"}}, "site1"),
        ({"replicas": 2}, "iotbridge"),
        ({"replicas": 2, "mqtt": {"sharedGroup": "site1"}}, "site1"),
    ],
)
def test_shared_group_only_with_replicas_or_when_set(
    values: dict[str, Any], group: str | None
) -> None:
    env = env_of(render(values))
    assert env.get("IOTBRIDGE_MQTT_SHARED_GROUP", {}).get("value") == group
    assert env["IOTBRIDGE_MQTT_CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_disruption_budget_only_with_several_replicas() -> None:
    assert "PodDisruptionBudget" not in kinds(render())
    docs = render(production_values())
    pdb = only(docs, "PodDisruptionBudget")
    deployment = only(docs, "Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    off = render({"replicas": 3, "podDisruptionBudget": {"enabled": False}})
    assert "PodDisruptionBudget" not in kinds(off)


# The rendered environment is a configuration the bridge accepts


def content_of(file_name: str) -> str:
    return f"content of {file_name}"


def site_password_files(docs: list[Manifest]) -> dict[str, str]:
    """Each file the pod sees in projected Secret volumes, with what it holds: the value in the
    chart's own Secret, or a stand-in for a Secret the user brings."""
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    secrets = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Secret"}
    files = {}
    for mount in container(docs)["volumeMounts"]:
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            ref = source["secret"]
            for item in ref["items"]:
                own = secrets.get(ref["name"])
                value = (
                    base64.b64decode(own["data"][item["key"]]).decode()
                    if own
                    else content_of(f"{ref['name']}/{item['key']}")
                )
                files[f"{mount['mountPath']}/{item['path']}"] = value
    return files


def test_the_bridge_loads_what_the_chart_renders(case: str, tmp_path: Path) -> None:
    """The pod's /etc/iotbridge is tmp_path: the env's paths, the ConfigMap's and the mounted
    files all have to meet there for the bridge to load."""
    docs = render(CASES[case])
    configmap = only(docs, "ConfigMap")

    def local(path: str) -> Path:
        file = tmp_path / path.removeprefix("/etc/iotbridge/")
        file.parent.mkdir(parents=True, exist_ok=True)
        return file

    for path, value in site_password_files(docs).items():
        local(path).write_text(value + "\n", encoding="utf-8")
    environ: dict[str, str] = {}
    for name, item in env_of(docs).items():
        if "valueFrom" in item:
            environ[name] = "iotbridge-7d9f8c6b5-x2x9q"  # the downward API's pod name
        elif item["value"].startswith("/etc/iotbridge/"):
            file = local(item["value"])
            if name == "IOTBRIDGE_CONFIG":
                text = configmap["data"]["config.yaml"].replace("/etc/iotbridge/", f"{tmp_path}/")
                file.write_text(text, encoding="utf-8")
            else:
                file.write_text(content_of(file.name) + "\n", encoding="utf-8")
            environ[name] = str(file)
        else:
            environ[name] = item["value"]
    settings = config.load(environ)
    assert settings.http.addr == "0.0.0.0:9464"
    assert settings.mqtt.client_id == "iotbridge-7d9f8c6b5-x2x9q"
    assert settings.log.format == "json"
    if case in {"production", "passwords"}:
        assert settings.mqtt.password == content_of("mqtt-password")
        assert settings.sensaphone.password == content_of("sensaphone-password")
    if case == "sites":
        passwords = {
            site.name: site.sensaphone and site.sensaphone.password for site in settings.sites
        }
        assert passwords == {
            "north": NORTH_SECRET,
            "South_2": SOUTH_SECRET,
            "west": content_of("west-sensaphone/password"),
            "east": None,
        }
        sites = dict(config.per_site(settings))
        assert sites["north"].sensaphone.user == "north@example.com"
        assert sites["South_2"].topic_prefix == "restaurants/south"


# Monitoring


def test_monitoring_resources_only_when_enabled() -> None:
    assert not CRD_KINDS & set(kinds(render()))
    assert set(kinds(render(production_values()))) >= CRD_KINDS
    only_monitor = kinds(render({"serviceMonitor": {"enabled": True}}))
    assert "ServiceMonitor" in only_monitor
    assert "PrometheusRule" not in only_monitor
    only_rule = kinds(render({"prometheusRule": {"enabled": True}}))
    assert "PrometheusRule" in only_rule
    assert "ServiceMonitor" not in only_rule


def rule_file() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return rules


def test_prometheus_rule_is_the_plain_rules_file() -> None:
    rule = only(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"] == rule_file()


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by a selector `{`."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) | set(
        re.findall(r"\biotbridge_[a-z0-9_]+", expr)
    )


def test_alert_rules_use_only_metrics_the_bridge_exports() -> None:
    rules = [r for group in rule_file()["groups"] for r in group["rules"]]
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    assert used - {"up"} <= EXPORTED_METRICS
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in rules}
    offline = next(r for r in rules if "iotbridge_mqtt_connected" in r["expr"])
    assert offline["expr"].strip().endswith("== 0")
    assert offline["for"] == "2m"
    assert any(
        'iotbridge_commands_total{job="iotbridge", outcome!="ok"}' in e for e in exprs.values()
    )
    assert any(
        "histogram_quantile(0.99," in e and "iotbridge_command_duration_seconds_bucket" in e
        for e in exprs.values()
    )
    assert any(e.startswith("up{") and e.endswith("== 0") for e in exprs.values())


# Documentation


# Values documented as one row: free-form blocks and the probes' timings.
WHOLE_VALUES = {"config", "resources", "probes.liveness", "probes.readiness", "probes.startup"}


def leaf_names(values: dict[str, Any], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in WHOLE_VALUES:
            names |= leaf_names(value, f"{name}.")
        else:
            names.add(name)
    return names


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.MULTILINE))
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    assert documented == leaf_names(defaults)
