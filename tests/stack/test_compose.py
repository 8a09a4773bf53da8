"""docker-compose/docker-compose.yml: structure, files, health ordering, and agreement with Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pensu.settings import Settings, known_variables, load_settings
from tests.stack.stack_files import (
    COMPOSE_DIR,
    DOCKERFILE,
    GRAFANA_DASHBOARD_PROVIDER,
    command_args,
    container_ports,
    load_compose,
    option_value,
    parse_dockerfile,
    service_env,
    service_mounts,
)

ONE_SHOT = "kafka-init"
EXPECTED_SERVICES = {"kafka", ONE_SHOT, "pensu", "pensu_data_generator", "logstash", "graphite", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def default_topics(defaults: Settings) -> set[str]:
    return {defaults.metrics_kafka_topic, defaults.reported_anomalies_kafka_topic,
            defaults.prediction_metrics_kafka_topic, defaults.anomalies_metrics_kafka_topic,
            defaults.topics_kafka_topic}


def created_topics(service: dict[str, Any]) -> dict[str, int]:
    """Topic → partitions from the init script's `create <topic> <partitions> [config]` calls."""
    command = service["command"]
    script = command if isinstance(command, str) else "\n".join(str(c) for c in command)
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^\s*create\s+(\S+)\s+(\d+)\b", script, re.MULTILINE)}


def test_compose_parses_and_has_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue  # built locally from this repository
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    built = [s for s in services.values() if "build" in s]
    assert built, "the pensu image is built from this repository"
    for service in built:
        build = service["build"]
        context = (COMPOSE_DIR / (build if isinstance(build, str) else build["context"])).resolve()
        assert context.is_dir()
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE.resolve()
    # The generator reuses the service image, so both must name the same tag.
    assert services["pensu_data_generator"]["image"] == services["pensu"]["image"]


def test_bind_mounts_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in service_mounts(service):
            if mount.is_bind:
                assert (COMPOSE_DIR / mount.source).exists(), f"{name}: {mount.source} does not exist"
                assert mount.read_only, f"{name}: configuration mount {mount.source} should be :ro"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} not declared"


def test_every_service_has_a_healthcheck_except_the_one_shot_init(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == ONE_SHOT:
            # A one-shot job exits; dependants wait for its success instead of its health.
            assert "healthcheck" not in service
            assert str(service.get("restart", "no")) == "no"
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False)
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            expected = "service_completed_successfully" if target == ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} → {target}"
    needs = {name: set(s.get("depends_on") or {}) for name, s in services.items()}
    assert needs[ONE_SHOT] == {"kafka"}
    assert {"kafka", ONE_SHOT} <= needs["pensu"]
    assert ONE_SHOT in needs["pensu_data_generator"]
    assert {ONE_SHOT, "graphite"} <= needs["logstash"]
    assert "graphite" in needs["grafana"]

    # No cycles: every service must be startable.
    started: set[str] = set()
    while len(started) < len(services):
        ready = {n for n in services if n not in started and needs[n] <= started}
        assert ready, f"dependency cycle among {set(services) - started}"
        started |= ready


def test_topic_init_creates_exactly_the_settings_topics(services: dict[str, dict[str, Any]],
                                                        defaults: Settings) -> None:
    init = services[ONE_SHOT]
    script = "\n".join(str(c) for c in init["command"])
    assert "kafka-topics.sh" in script and "--create" in script and "--if-not-exists" in script
    topics = created_topics(init)
    assert set(topics) == default_topics(defaults)
    assert all(p >= 1 for p in topics.values())
    # Outputs are keyed by input metric: same partition count keeps a metric's data co-located.
    assert topics[defaults.reported_anomalies_kafka_topic] == topics[defaults.metrics_kafka_topic]
    assert topics[defaults.prediction_metrics_kafka_topic] == topics[defaults.metrics_kafka_topic]
    assert init["image"] == services["kafka"]["image"]


def test_pensu_service_matches_settings(services: dict[str, dict[str, Any]], defaults: Settings) -> None:
    pensu = services["pensu"]
    env = service_env(pensu)
    unknown = {k for k in env if k.upper().startswith("PENSU_")} - known_variables()
    assert not unknown, f"not Settings variables: {unknown}"
    settings = load_settings(env)  # values must validate too

    kafka_env = service_env(services["kafka"])
    assert f"PLAINTEXT://{settings.kafka_bootstrap_servers}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.kafka_bootstrap_servers.split(":")[0] == "kafka"

    assert container_ports(pensu) == {defaults.ping_listen_port, defaults.http_port}
    test = " ".join(pensu["healthcheck"]["test"])
    assert "ping" in test and "pong" in test and str(defaults.ping_listen_port) in test

    # The models volume sits where Pensu writes checkpoints and where the image declares VOLUME.
    targets = {m.target for m in service_mounts(pensu) if not m.is_bind}
    assert str(settings.models_dir) in targets
    volumes = [i for i in parse_dockerfile(DOCKERFILE.read_text()) if i.keyword == "VOLUME"]
    assert any(str(settings.models_dir) in (v.exec_form() or v.args.split()) for v in volumes)


def test_generator_feeds_the_input_topic_in_real_time(services: dict[str, dict[str, Any]],
                                                      defaults: Settings) -> None:
    gen = services["pensu_data_generator"]
    args = command_args(gen)
    assert args[0] == "generate"
    bootstrap = service_env(services["pensu"])["PENSU_KAFKA_BOOTSTRAP_SERVERS"]
    assert option_value(args, "--bootstrap-servers") == bootstrap
    topic = option_value(args, "--topic")
    assert topic is None or topic == defaults.metrics_kafka_topic
    interval = float(option_value(args, "--interval") or 60)
    rate = float(option_value(args, "--rate") or 1)
    # One sample per series every `interval` seconds of data time, `rate` per wall second:
    # their product is 1 exactly when data time keeps pace with the wall clock. Faster, the
    # series would run into the future, out of a dashboard that ends at "now" (and around
    # whisper's ring archive); slower, it would fall behind.
    assert interval * rate == pytest.approx(1.0)


def test_grafana_mounts_match_the_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = {Path(m.source).name: m.target for m in service_mounts(grafana) if m.is_bind}
    assert mounts["provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDER.read_text())["providers"][0]
    assert provider["options"]["path"] == mounts["dashboards"]
    home = service_env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert home.startswith(mounts["dashboards"] + "/")
        assert (COMPOSE_DIR / "../grafana/dashboards" / Path(home).name).is_file()


def test_logstash_mounts_the_pipeline(services: dict[str, dict[str, Any]]) -> None:
    mounts = {m.source: m.target for m in service_mounts(services["logstash"]) if m.is_bind}
    assert mounts["../logstash/pipeline"] == "/usr/share/logstash/pipeline"
    assert (COMPOSE_DIR / "../logstash/pipeline/pensu.conf").is_file()
