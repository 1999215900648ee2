"""The deployment files of ``deploy/`` (issue 19, items 1 and 2), validated offline: Docker, Kubernetes and
PostgreSQL cannot run here.

* each ``dagster.yaml`` passes Dagster's own instance schema and every configured class's config schema
  (PostgreSQL storage, the queued run coordinator, the Docker run launcher, instantiated);
* the Docker instance is the base instance plus the Docker run launcher, and every variable the launcher
  copies into a run's container is set in the compose file or the env file;
* ``docker-compose.yml`` names only keys of the Compose specification (compose-spec/compose-spec,
  ``schema/compose-spec.json``) and its services, volumes, network and image fit the launcher's config;
* the Helm values name only keys of the official chart's ``values.schema.json`` (dagster-io/dagster,
  ``helm/dagster``, 1.13) and carry the same queue, pools, retries and monitoring as ``deploy/dagster.yaml``;
* the vision servers' manifests give each server a GPU and a Service at the URL the code location uses.

A real PostgreSQL run of ``deploy/dagster.yaml`` (``dagster instance info``, a backfill through the daemon)
is in ``vlm_gist_dagster_tests/postgres`` (``make test-postgres``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes.config_class import ConfigurableClassData

from vlm_gist_dagster.runner import patched_environ

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE_YAML = DEPLOY / "dagster.yaml"
DOCKER_YAML = DEPLOY / "docker" / "dagster.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
VISION_SERVERS = DEPLOY / "helm" / "vision-servers.yaml"
ENV_EXAMPLE = DEPLOY / "service.env.example"
PG_ENV = {
    "DAGSTER_PG_HOST": "db.example",
    "DAGSTER_PG_PORT": "5433",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_DB": "dagster",
}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def class_data(ref: InstanceRef) -> dict[str, ConfigurableClassData]:
    return {
        "run_storage": ref.run_storage_data,
        "event_log_storage": ref.event_storage_data,
        "schedule_storage": ref.schedule_storage_data,
        "run_coordinator": ref.run_coordinator_data,
        "run_launcher": ref.run_launcher_data,
        "scheduler": ref.scheduler_data,
        "compute_logs": ref.compute_logs_data,
    }


def validate_instance_dir(home: Path) -> InstanceRef:
    """What loading the instance checks, short of connecting: the instance schema, then each configured
    class's own schema, with the environment variables resolved."""
    dagster_instance_config(str(home))
    ref = InstanceRef.from_dir(str(home))
    for role, data in class_data(ref).items():
        if data is None:
            continue
        klass = data.info_dict()  # module / class / config as written
        cls = getattr(__import__(klass["module"], fromlist=[klass["class"]]), klass["class"])
        result = process_config(cls.config_type(), yaml.safe_load(data.config_yaml) or {})
        assert result.success, (role, [e.message for e in result.errors])
    return ref


@pytest.mark.parametrize("path", [BASE_YAML, DOCKER_YAML], ids=["base", "docker"])
def test_instance_config_passes_dagsters_schemas(tmp_path, path):
    shutil.copy(path, tmp_path / "dagster.yaml")
    with patched_environ(PG_ENV):
        ref = validate_instance_dir(tmp_path)
    assert ref.run_storage_data.module_name == "dagster_postgres"
    assert ref.event_storage_data.class_name == "PostgresEventLogStorage"
    assert ref.run_coordinator_data.class_name == QueuedRunCoordinator.__name__
    storage = yaml.safe_load(ref.run_storage_data.config_yaml)["postgres_db"]
    assert {k: v["env"] for k, v in storage.items() if isinstance(v, dict)} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }
    settings = ref.settings
    assert settings["concurrency"]["pools"]["default_limit"] == 1  # one SAM2 step per server
    assert settings["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    assert settings["run_retries"]["enabled"] and settings["auto_materialize"]["use_sensors"]
    assert settings["run_monitoring"]["free_slots_after_run_end_seconds"] > 0  # dagster#28456


def test_a_misspelt_key_is_refused(tmp_path):
    """The validation above can fail: Dagster's schema rejects an unknown key."""
    text = BASE_YAML.read_text().replace("max_concurrent_runs:", "max_concurent_runs:")
    (tmp_path / "dagster.yaml").write_text(text)
    with patched_environ(PG_ENV), pytest.raises(DagsterInvalidConfigError, match="max_concurent_runs"):
        validate_instance_dir(tmp_path)


def test_the_docker_instance_is_the_base_plus_the_docker_run_launcher(tmp_path):
    base, docker = load(BASE_YAML), load(DOCKER_YAML)
    launcher = docker.pop("run_launcher")
    assert docker == base
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    shutil.copy(DOCKER_YAML, tmp_path / "dagster.yaml")
    from dagster_docker import DockerRunLauncher

    with patched_environ(PG_ENV):
        ref = validate_instance_dir(tmp_path)
        # Instantiating it checks the combination rules (network vs networks, no image in kwargs).
        assert isinstance(ref.run_launcher_data.rehydrate(DockerRunLauncher), DockerRunLauncher)


# --- docker-compose.yml ----------------------------------------------------------------------------
# Keys of the Compose specification (compose-spec/compose-spec schema/compose-spec.json): top level,
# service, and the nested objects this file uses; `x-` extension keys are allowed everywhere.
COMPOSE_TOP = {
    "version",
    "name",
    "include",
    "services",
    "models",
    "networks",
    "volumes",
    "secrets",
    "configs",
}
COMPOSE_SERVICE = {
    "develop",
    "deploy",
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "label_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "models",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "secrets",
    "sysctls",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "uts",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
}
COMPOSE_BUILD = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "entitlements",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "network",
    "pull",
    "target",
    "shm_size",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "tags",
    "ulimits",
    "platforms",
}
COMPOSE_HEALTHCHECK = {"disable", "interval", "retries", "test", "timeout", "start_period", "start_interval"}
COMPOSE_DEPENDS_ON = {"restart", "required", "condition"}
COMPOSE_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
COMPOSE_ENV_FILE = {"path", "required", "format"}
COMPOSE_VOLUME = {"name", "driver", "driver_opts", "external", "labels"}
COMPOSE_NETWORK = {
    "name",
    "driver",
    "driver_opts",
    "ipam",
    "external",
    "internal",
    "enable_ipv6",
    "attachable",
    "labels",
}
COMPOSE_RESTART = {"no", "always", "on-failure", "unless-stopped"}


def unknown(keys, allowed: set[str]) -> set[str]:
    return {k for k in keys if k not in allowed and not str(k).startswith("x-")}


def test_compose_names_only_keys_of_the_compose_spec():
    compose = load(COMPOSE)  # YAML merge keys (<<) are resolved here, as Compose does
    assert not unknown(compose, COMPOSE_TOP)
    for name, service in compose["services"].items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name)
        assert not unknown(service, COMPOSE_SERVICE), name
        if isinstance(service.get("build"), dict):
            assert not unknown(service["build"], COMPOSE_BUILD), name
        assert not unknown(service.get("healthcheck", {}), COMPOSE_HEALTHCHECK), name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in compose["services"], (name, dependency)
            assert not unknown(condition, COMPOSE_DEPENDS_ON) and condition["condition"] in COMPOSE_CONDITIONS
        for entry in service.get("env_file", []):
            assert isinstance(entry, str) or not unknown(entry, COMPOSE_ENV_FILE), name
        assert str(service.get("restart", "no")) in COMPOSE_RESTART, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("/") or source in compose["volumes"], (name, volume)
        for network in service.get("networks", []):
            assert network in compose["networks"], (name, network)
        for key, value in service.get("environment", {}).items():
            assert isinstance(value, str), (name, key)  # Compose wants strings (or null), not numbers
    for volume in compose["volumes"].values():
        assert not unknown(volume or {}, COMPOSE_VOLUME)
    for network in compose["networks"].values():
        assert not unknown(network or {}, COMPOSE_NETWORK)


def test_compose_fits_the_docker_run_launcher_and_the_workspace():
    compose, launcher = load(COMPOSE), load(DOCKER_YAML)["run_launcher"]["config"]
    services = compose["services"]
    assert {"postgres", "code_location", "webserver", "daemon"} <= set(services)
    # Run containers join the compose network and mount the shared data volume, by their fixed names.
    assert launcher["network"] == compose["networks"]["vlm_gist"]["name"]
    (mount,) = launcher["container_kwargs"]["volumes"]
    assert mount.split(":")[0] == compose["volumes"]["vlm_gist_data"]["name"]
    assert mount.split(":")[1] == services["code_location"]["environment"].get("VLM_GIST_DATA_DIR", "/data")
    # ... and start from the code location's image, which the daemon can reach the Docker engine for.
    assert (
        services["code_location"]["environment"]["DAGSTER_CURRENT_IMAGE"]
        == services["code_location"]["image"]
    )
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["daemon"]["volumes"]
    # Every variable the launcher copies must be set in the daemon's environment (else the launch fails:
    # "Tried to load environment variable ..., but it was not set").
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]*=", line)
    }
    daemon_env = set(services["daemon"]["environment"]) | example
    assert set(launcher["env_vars"]) <= daemon_env, set(launcher["env_vars"]) - daemon_env
    # The workspace of the webserver and daemon points at the code location's gRPC port.
    workspace = load(DEPLOY / "docker" / "workspace.yaml")["load_from"][0]["grpc_server"]
    assert workspace["host"] == "code_location"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert cmd[cmd.index("-p") + 1] == str(workspace["port"])
    assert cmd[cmd.index("-m") + 1] == "vlm_gist_dagster.definitions"
    assert cmd[cmd.index("--location-name") + 1] == workspace["location_name"]
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path


# --- Helm values ------------------------------------------------------------------------------------
# Keys of the official chart's values.schema.json (dagster-io/dagster helm/dagster, Dagster 1.13), for
# the objects these values set. Objects typed as plain dicts by the chart (env, resources, ...) are free.
HELM_TOP = {
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "imagePullSecrets",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "serviceAccount",
    "global",
    "retention",
    "additionalInstanceConfig",
}
HELM_WEBSERVER = {
    "replicaCount",
    "image",
    "nameOverride",
    "pathPrefix",
    "service",
    "workspace",
    "env",
    "envConfigMaps",
    "envSecrets",
    "deploymentLabels",
    "labels",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "annotations",
    "enableReadOnly",
    "dbStatementTimeout",
    "dbPoolRecycle",
    "logLevel",
    "schedulerName",
    "volumeMounts",
    "volumes",
    "initContainerResources",
}
HELM_USER_DEPLOYMENTS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
HELM_USER_DEPLOYMENT = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "deploymentNamespace",
    "port",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
}
HELM_IMAGE = {"repository", "tag", "pullPolicy"}
HELM_PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
HELM_POSTGRESQL = {
    "image",
    "enabled",
    "postgresqlHost",
    "postgresqlUsername",
    "postgresqlPassword",
    "postgresqlDatabase",
    "postgresqlParams",
    "postgresqlScheme",
    "service",
}
HELM_RUN_LAUNCHER_TYPES = {"CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"}
HELM_K8S_RUN_LAUNCHER = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
HELM_K8S_RUN_LAUNCHER_REQUIRED = {
    "imagePullPolicy",
    "loadInclusterConfig",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
}
HELM_DAEMON = {
    "enabled",
    "image",
    "runCoordinator",
    "heartbeatTolerance",
    "env",
    "envConfigMaps",
    "envSecrets",
    "deploymentLabels",
    "labels",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "annotations",
    "runMonitoring",
    "runRetries",
    "sensors",
    "schedules",
    "schedulerName",
    "volumeMounts",
    "volumes",
    "initContainerResources",
}
HELM_RUN_COORDINATOR = {"enabled", "type", "config"}
HELM_QUEUED_RUN_COORDINATOR = {
    "maxConcurrentRuns",
    "tagConcurrencyLimits",
    "dequeueIntervalSeconds",
    "dequeueNumWorkers",
    "dequeueUseThreads",
    "blockOpConcurrencyLimitedRuns",
}
HELM_THREADS = {"useThreads", "numWorkers", "numSubmitWorkers"}
HELM_GLOBAL = {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_helm_values_name_only_keys_of_the_charts_schema():
    values = load(HELM_VALUES)
    assert not unknown(values, HELM_TOP)
    assert not unknown(values["global"], HELM_GLOBAL)
    assert not unknown(values["dagsterWebserver"], HELM_WEBSERVER)
    user = values["dagster-user-deployments"]
    assert not unknown(user, HELM_USER_DEPLOYMENTS) and user["enabled"]
    for deployment in user["deployments"]:
        assert not unknown(deployment, HELM_USER_DEPLOYMENT)
        assert {"name", "image", "port"} <= set(deployment)
        assert (
            not unknown(deployment["image"], HELM_IMAGE)
            and deployment["image"]["pullPolicy"] in HELM_PULL_POLICIES
        )
        assert (
            deployment["codeServerArgs"][deployment["codeServerArgs"].index("-m") + 1]
            == "vlm_gist_dagster.definitions"
        )
    assert not unknown(values["postgresql"], HELM_POSTGRESQL)
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher" and launcher["type"] in HELM_RUN_LAUNCHER_TYPES
    k8s = launcher["config"]["k8sRunLauncher"]
    assert not unknown(k8s, HELM_K8S_RUN_LAUNCHER) and HELM_K8S_RUN_LAUNCHER_REQUIRED <= set(k8s)
    daemon = values["dagsterDaemon"]
    assert not unknown(daemon, HELM_DAEMON)
    assert not unknown(daemon["runCoordinator"], HELM_RUN_COORDINATOR)
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert not unknown(queued, HELM_QUEUED_RUN_COORDINATOR)
    # Dagster refuses run limits in the coordinator's config next to `concurrency` (instance/config.py).
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)
    for block in ("sensors", "schedules"):
        assert not unknown(daemon[block], HELM_THREADS) and "useThreads" in daemon[block]


def test_helm_values_carry_the_instance_settings_of_deploy_dagster_yaml(tmp_path):
    """The chart renders dagsterDaemon.runRetries / runMonitoring (camelCase -> snake_case) and merges
    additionalInstanceConfig as it is: together they equal deploy/dagster.yaml's settings, and they pass
    Dagster's instance schema."""
    values, base = load(HELM_VALUES), load(BASE_YAML)
    daemon, extra = values["dagsterDaemon"], values["additionalInstanceConfig"]
    assert {snake(k): v for k, v in daemon["runRetries"].items()} == base["run_retries"]
    assert {snake(k): v for k, v in daemon["runMonitoring"].items()} == base["run_monitoring"]
    assert {snake(k): v for k, v in daemon["sensors"].items()} == base["sensors"]
    assert {snake(k): v for k, v in daemon["schedules"].items()} == base["schedules"]
    for key in ("concurrency", "auto_materialize", "backfills"):
        assert extra[key] == base[key], key
    assert values["telemetry"] == base["telemetry"]
    assert values["postgresql"]["postgresqlScheme"] == base["storage"]["postgres"]["postgres_db"]["scheme"]
    rendered = {
        "storage": base["storage"],
        "run_coordinator": base["run_coordinator"],
        "run_retries": {snake(k): v for k, v in daemon["runRetries"].items()},
        "run_monitoring": {snake(k): v for k, v in daemon["runMonitoring"].items()},
        "telemetry": values["telemetry"],
        **extra,
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    with patched_environ(PG_ENV):
        validate_instance_dir(tmp_path)


def test_vision_servers_are_gpu_deployments_behind_the_urls_the_code_location_uses():
    documents = [d for d in yaml.safe_load_all(VISION_SERVERS.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    families = set(json.loads((REPO / "settings" / "vision_servers.json").read_text())["servers"])
    env = load(HELM_VALUES)["dagster-user-deployments"]["deployments"][0]["env"]
    assert "sam2_realtime" in {
        c["command"][c["command"].index("--family") + 1]
        for d in deployments.values()
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] == 1  # one server = one pool; scale with more Deployments
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:2] == ["vlm-gist", "vision-serve"]
        family, port = command[command.index("--family") + 1], int(command[command.index("--port") + 1])
        assert family in families
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        url = urlsplit(env[f"VLM_GIST_VISION_URL_{family.upper()}"])
        assert (url.hostname, url.port) == (name, port)
        assert services[name]["spec"]["ports"][0]["port"] == port
