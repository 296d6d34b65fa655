"""The deployment files (deploy/**, docs/deploy.md) checked offline against Kubernetes and against the code.

No cluster, helm or container runtime is used: every YAML parses; every Kubernetes object (also the pod
templates and the objects inside the Airflow chart values) validates against the Kubernetes OpenAPI schema
in strict mode (``kubernetes-validate``: unknown fields and missing required fields fail); and the
manifests agree with the code: ``SOE_*`` variables name real settings fields, the SoE config in the
ConfigMap loads with ``soe.config.load_settings``, ports, probe paths, commands, ACL rules, pools, queues,
Spark settings and secret references match. Each checker returns a list of problems and is also run on a
deliberately broken input, so a checker that can never fail is caught too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.deploy import (
    DEPLOY,
    DEPLOY_DOC,
    DOCKERFILE,
    HELM_VALUES,
    IMAGE_HOME,
    NAMESPACE,
    OBJECTS,
    ROOT,
    TEMPLATE_VALUES,
    USER_PASSWORD_KEYS,
    VALUES,
    config_key_problems,
    containers,
    doc_key_problems,
    dockerfile_problems,
    dockerfile_stages,
    embedded_pod_templates,
    fragment_problems,
    hadolint,
    is_template,
    k8s_object_problems,
    load_soe_settings,
    load_yaml_docs,
    manifest_paths,
    obj,
    objects,
    plain_env,
    pod_spec,
    render_template,
    route_problems,
    secret_ref_problems,
    settings_var_problems,
    soe_cli_problems,
    soe_yaml_text,
    spark_conf,
    spark_defaults_problems,
    workloads,
)

# ------------------------------------------------------------------------------------ YAML and schemas


def test_every_yaml_under_deploy_parses():
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 10
    for path in paths:
        assert load_yaml_docs(path), f"{path} holds no document"
    for label, doc in embedded_pod_templates():
        assert doc["spec"]["containers"], label


def test_templates_have_no_unfilled_placeholders():
    templates = [p for p in manifest_paths() if is_template(p)]
    assert {p.name for p in templates} == {"encoder-indexed-job.yaml", "spark-sequences-job.yaml"}
    for path in templates:
        assert "${" not in render_template(path.read_text()), path
    for path in manifest_paths():
        if not is_template(path):  # applied as is: a ${...} outside a shell script would reach the cluster
            for doc in load_yaml_docs(path):
                if doc.get("kind") != "ConfigMap":
                    assert "${" not in json.dumps(doc), path
    with pytest.raises(KeyError, match="NOPE"):
        render_template("name: x-${NOPE}")


@pytest.mark.parametrize(
    "where,o", OBJECTS, ids=[f"{f}:{o['kind']}/{o['metadata']['name']}" for f, o in OBJECTS]
)
def test_kubernetes_objects_validate_strictly(where, o):
    assert k8s_object_problems(o) == [], where


def test_pod_templates_and_chart_values_validate_strictly():
    for label, doc in embedded_pod_templates():
        assert k8s_object_problems({**doc, "metadata": {"name": "tmpl", "namespace": NAMESPACE}}) == [], label
    problems = []
    for e in VALUES["env"]:
        problems += fragment_problems(e, "io.k8s.api.core.v1.EnvVar")
    for key, definition in (
        ("volumes", "io.k8s.api.core.v1.Volume"),
        ("volumeMounts", "io.k8s.api.core.v1.VolumeMount"),
    ):
        for item in VALUES[key] + VALUES["migrateDatabaseJob"].get(f"extra{key[0].upper()}{key[1:]}", []):
            problems += fragment_problems(item, definition)
    problems += fragment_problems(VALUES["workers"]["resources"], "io.k8s.api.core.v1.ResourceRequirements")
    assert problems == []


def test_schema_check_fails_on_broken_objects():
    good = obj("Deployment", "soe-serve")
    assert k8s_object_problems(good) == []
    typo = json.loads(json.dumps(good))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in p for p in k8s_object_problems(typo))
    missing = json.loads(json.dumps(good))
    del missing["spec"]["selector"]
    assert any("'selector' is a required property" in p for p in k8s_object_problems(missing))
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["replicas"] = "two"
    assert k8s_object_problems(wrong_type)
    bad_name = {**good, "metadata": {**good["metadata"], "name": "soe-encode-20260102T0500Z"}}
    assert any("DNS-1123" in p for p in k8s_object_problems(bad_name))
    assert k8s_object_problems({**good, "metadata": {"name": "x", "namespace": "default"}})
    assert k8s_object_problems({"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "x"}})
    assert fragment_problems({"name": "x", "mountpath": "/x"}, "io.k8s.api.core.v1.VolumeMount")


# ------------------------------------------------------------------------------------ SoE settings


def test_configmap_soe_yaml_loads_and_every_key_is_a_field(tmp_path):
    tree = yaml.safe_load(soe_yaml_text())
    assert config_key_problems(tree) == []
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    assert str(s.data.root) == "/mnt/soe"
    assert s.spark.launcher == "spark-submit" and s.redis.mode == "cluster"
    assert s.serve.host == "0.0.0.0", "the query service must listen on the pod IP, not loopback"
    assert s.inference.device.startswith("cuda")
    # the example config for an Airflow deployment next to it loads too
    example = (DEPLOY / "airflow" / "soe.example.yaml").read_text()
    assert config_key_problems(yaml.safe_load(example)) == []
    load_soe_settings(example, tmp_path)


def test_config_key_check_fails_on_unknown_keys(tmp_path):
    assert config_key_problems({"redis": {"portt": 1}}) == ["redis.portt: not a field of RedisSettings"]
    assert config_key_problems({"refresh": {"retries": 1}})
    with pytest.raises(ValueError):
        load_soe_settings("redis:\n  portt: 1\n", tmp_path)


def test_every_soe_env_var_is_a_settings_field(tmp_path):
    names = set()
    for path in [*DEPLOY.rglob("*"), DEPLOY_DOC]:
        if path.is_file():
            names |= set(re.findall(r"\bSOE_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    for _, o in [("values", {"env": VALUES["env"]})]:
        names |= {e["name"] for e in o["env"] if e["name"].startswith("SOE_")}
    names |= {s["envName"] for s in VALUES["secret"]}
    assert {"SOE_REDIS__PASSWORD", "SOE_REDIS__USERNAME", "SOE_CONFIG"} <= names
    assert settings_var_problems(names) == []
    # and each workload's overrides load on top of the ConfigMap (values valid for their fields)
    for _label, spec in workloads():
        for c in containers(spec):
            env = plain_env(c)
            if env:
                load_soe_settings(soe_yaml_text(), tmp_path, env)


def test_settings_var_check_fails_on_unknown_names():
    assert settings_var_problems({"SOE_REDIS__PASSWORDD"})
    assert settings_var_problems({"SOE_REFRESH__RETRIES"})
    assert settings_var_problems({"SOE_REDIS__PORT__X"})
    assert settings_var_problems({"SOE_REDISPORT"})
    assert settings_var_problems({"SOE_SPARK__CONF__SPARK_EXECUTOR_CORES", "SOE_CONFIG"}) == []


def test_soe_config_env_points_at_the_mounted_configmap():
    for label, spec in workloads():
        mounts_by_volume = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            env = {e["name"]: e.get("value") for e in c.get("env", []) or []}
            if "SOE_CONFIG" not in env:
                continue
            path = Path(env["SOE_CONFIG"])
            mount = [m for m in c.get("volumeMounts", []) if m["mountPath"] == str(path.parent)]
            assert mount, f"{label}: SOE_CONFIG={path} but nothing is mounted at {path.parent}"
            volume = mounts_by_volume[mount[0]["name"]]
            assert volume.get("configMap", {}).get("name") == "soe-config", label
            assert path.name in obj("ConfigMap", "soe-config")["data"], label
    by_name = {v["name"]: v for v in VALUES["volumes"]}
    soe_config = next(e["value"] for e in VALUES["env"] if e["name"] == "SOE_CONFIG")
    mount = next(m for m in VALUES["volumeMounts"] if m["mountPath"] == str(Path(soe_config).parent))
    assert by_name[mount["name"]]["configMap"]["name"] == "soe-config"


# ------------------------------------------------------------------------------- commands and routes


def _soe_image(c: dict) -> bool:
    return re.search(r"/soe:[\w.-]+$", c.get("image", "")) is not None


def test_soe_commands_exist_in_the_cli():
    seen = set()
    for label, spec in workloads():
        for c in containers(spec):
            if _soe_image(c) and not c.get("command"):  # ENTRYPOINT soe
                assert soe_cli_problems(c["args"]) == [], label
                seen.add(c["args"][0])
    assert {"serve", "encode"} <= seen


def test_cli_check_fails_on_unknown_commands_and_options():
    assert soe_cli_problems(["serve", "--port", "8080"]) == []
    assert soe_cli_problems(["serv"])
    assert soe_cli_problems(["encode", "--shardz", "1"])
    assert soe_cli_problems(["models"])  # a group without its subcommand


def test_spark_submit_entry_point_and_scripts_exist():
    from soe.flows import spark_submit
    from soe.flows.dag_support import SPARK_SUBMIT_APP

    app_rel = Path(SPARK_SUBMIT_APP).resolve().relative_to(ROOT)
    job = pod_spec(obj("Job", "soe-sequences-20260102t0500z"))
    submit = job["containers"][0]
    assert submit["command"] == ["spark-submit"]
    app_args = submit["args"]
    app = next(a for a in app_args if a.endswith(".py"))
    assert app == f"{IMAGE_HOME}/{app_rel}", "the Job submits the file the DAG's SparkSubmitOperator submits"
    assert (ROOT / Path(app).relative_to(IMAGE_HOME)).is_file()
    with pytest.raises(SystemExit) as ok:  # the entry point accepts the Job's arguments (--help: do not run)
        spark_submit.main(app_args[app_args.index(app) + 1 :] + ["--help"])
    assert ok.value.code == 0
    with pytest.raises(SystemExit) as bad:
        spark_submit.main(["sequencez", "--help"])
    assert bad.value.code == 2
    # container commands that are files of the repo exist there and are executable
    for label, spec in workloads():
        for c in containers(spec):
            for part in (c.get("command") or [])[:1]:
                if part.startswith(IMAGE_HOME + "/"):
                    f = ROOT / Path(part).relative_to(IMAGE_HOME)
                    assert f.is_file() and f.stat().st_mode & 0o111, f"{label}: {part}"


def test_probe_and_metrics_paths_are_routes_of_the_service(tmp_path):
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    dep = obj("Deployment", "soe-serve")
    spec = pod_spec(dep)
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    paths = []
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        http = c[probe]["httpGet"]
        paths.append(http["path"])
        port = ports.get(http["port"], http["port"])
        assert port == s.serve.port, f"{probe} port {port} != serve.port {s.serve.port}"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    paths.append(ann["prometheus.io/path"])
    assert ann["prometheus.io/path"] == "/metrics" and ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == s.serve.port
    assert route_problems(paths) == []
    assert route_problems(["/readyz"])


def test_service_and_ports_match_the_settings(tmp_path):
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    c = pod_spec(obj("Deployment", "soe-serve"))["containers"][0]
    env = plain_env(c)
    served = load_soe_settings(soe_yaml_text(), tmp_path, env)
    assert [p["containerPort"] for p in c["ports"]] == [served.serve.port]
    assert "--port" not in c["args"] and "--host" not in c["args"]
    svc = obj("Service", "soe-serve")
    assert (
        svc["spec"]["selector"].items()
        <= obj("Deployment", "soe-serve")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}
    hpa = obj("HorizontalPodAutoscaler", "soe-serve")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "soe-serve"
    assert s.serve.port == served.serve.port


def test_prometheus_scrape_config_keeps_the_annotated_pods():
    jobs = yaml.safe_load(obj("ConfigMap", "soe-prometheus-scrape")["data"]["soe-scrape.yaml"])
    job = jobs[0]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    assert NAMESPACE in job["kubernetes_sd_configs"][0]["namespaces"]["names"]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    ann = obj("Deployment", "soe-serve")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(keep["regex"], ann["prometheus.io/scrape"])
    labels = {lab for r in job["relabel_configs"] for lab in r.get("source_labels", [])}
    assert {
        "__meta_kubernetes_pod_annotation_prometheus_io_path",
        "__meta_kubernetes_pod_annotation_prometheus_io_port",
    } <= labels
    port_rule = next(r for r in job["relabel_configs"] if r.get("target_label") == "__address__")
    joined = "10.0.0.7:9999;" + ann["prometheus.io/port"]
    assert re.sub(port_rule["regex"], port_rule["replacement"].replace("$", "\\"), joined) == "10.0.0.7:8080"


# --------------------------------------------------------------------------------------------- Redis


def redis_conf() -> dict[str, str]:
    conf = {}
    for line in obj("ConfigMap", "soe-redis-conf")["data"]["redis.conf"].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf


def test_redis_cluster_persistence_topology_and_settings(tmp_path):
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    conf = redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    assert conf["cluster-enabled"] == "yes" and conf["maxmemory-policy"] == "noeviction"
    memory = spark_conf((DEPLOY / "redis" / "soe-memory.conf").read_text())
    assert memory and all(conf.get(k) == v for k, v in memory.items()), (
        "differs from deploy/redis/soe-memory.conf"
    )
    sts = obj("StatefulSet", "soe-redis")
    replicas = sts["spec"]["replicas"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = pod_spec(sts)["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"] and conf["dir"] == "/data"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["client"] == int(conf["port"]) == s.redis.port
    assert ports["bus"] == s.redis.port + 10000
    svc = obj("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"].get("publishNotReadyAddresses") is True
    assert {p["port"] for p in svc["spec"]["ports"]} == {ports["client"], ports["bus"]}
    job = pod_spec(obj("Job", "soe-redis-cluster-init"))
    init = job["initContainers"][0]  # forms the cluster; then the soe container loads the functions
    assert job["containers"][0]["args"] == ["redis", "functions", "load"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    per_master = int(env["REDIS_REPLICAS_PER_MASTER"])
    assert int(env["REDIS_NODES"]) == replicas
    assert replicas // (1 + per_master) == 3 and per_master == 1, "3 masters with 1 replica each"
    # the clients' startup nodes are pods of this StatefulSet behind this Service, on the client port
    assert s.redis.mode == "cluster" and s.redis.startup_nodes
    for host, port in s.redis.nodes():
        m = re.fullmatch(rf"{sts['metadata']['name']}-(\d+)\.{svc['metadata']['name']}", host)
        assert m and int(m.group(1)) < replicas, host
        assert port == ports["client"], host


def test_redis_acl_template_is_store_acl(tmp_path):
    from store.acl import acl_file

    s = load_soe_settings(soe_yaml_text(), tmp_path)
    template = obj("ConfigMap", "soe-redis-conf")["data"]["users.acl.tmpl"]
    rendered = acl_file(
        {"soe-writer": ("writer", "w"), "soe-reader": ("reader", "r")},
        namespace=s.redis.namespace,
        default_password="a",
    )
    as_template = re.sub(r"#[0-9a-f]{64}", "#HASH", rendered)
    assert re.sub(r"#@\w+@", "#HASH", template) == as_template
    assert (
        re.sub(r"#[0-9a-f]{64}", "#HASH", (DEPLOY / "redis" / "users.acl.example").read_text()).split("\n")[
            :2
        ]
        == as_template.split("\n")[1:3]
    )
    # every placeholder is filled by start.sh, and from the right Secret key
    start = obj("ConfigMap", "soe-redis-conf")["data"]["start.sh"]
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in pod_spec(obj("StatefulSet", "soe-redis"))["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for placeholder, key in (
        ("ADMIN", "admin-password"),
        ("WRITER", "writer-password"),
        ("READER", "reader-password"),
    ):
        assert f"@{placeholder}_SHA256@" in template
        var = re.search(rf"s/@{placeholder}_SHA256@/\$\(sha \"\$(\w+)\"\)/", start).group(1)
        assert env[var] == key, placeholder


def test_redis_credentials_match_the_acl_users(tmp_path):
    """A workload's SOE_REDIS__PASSWORD comes from the Secret key of the ACL user it connects as."""
    base = load_soe_settings(soe_yaml_text(), tmp_path)
    checked = 0
    containers_env = [
        (label, c.get("env", []) or []) for label, spec in workloads() for c in containers(spec)
    ]
    containers_env.append(
        (
            "airflow-values",
            [
                *VALUES["env"],
                *[
                    {
                        "name": x["envName"],
                        "valueFrom": {"secretKeyRef": {"name": x["secretName"], "key": x["secretKey"]}},
                    }
                    for x in VALUES["secret"]
                ],
            ],
        )
    )
    for label, env in containers_env:
        by_name = {e["name"]: e for e in env}
        if "SOE_REDIS__PASSWORD" not in by_name:
            continue
        user = by_name.get("SOE_REDIS__USERNAME", {}).get("value", base.redis.username)
        ref = by_name["SOE_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("soe-redis-users", USER_PASSWORD_KEYS[user]), label
        checked += 1
    assert checked >= 3


def test_secret_references_are_defined():
    secrets = objects("Secret")
    refs = []
    for _label, spec in workloads():
        for c in containers(spec):
            for e in c.get("env", []) or []:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"]))
    refs += [(x["secretName"], x["secretKey"]) for x in VALUES["secret"]]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        refs.append(
            (
                VALUES[key],
                {
                    "fernetKeySecretName": "fernet-key",
                    "apiSecretKeySecretName": "api-secret-key",
                    "jwtSecretName": "jwt-secret",
                }[key],
            )
        )
    refs += [
        (VALUES["data"]["metadataSecretName"], "connection"),
        (VALUES["data"]["brokerUrlSecretName"], "connection"),
        (VALUES["redis"]["passwordSecretName"], "password"),
    ]
    assert len(refs) > 10
    assert secret_ref_problems(refs, secrets) == []
    assert secret_ref_problems([("soe-redis-users", "writer-pasword")], secrets)
    # no clear-text password anywhere but the example Secrets
    for path, o in OBJECTS:
        if o["kind"] == "Secret":
            assert path.endswith("secrets.example.yaml")
            assert all("CHANGE-ME" in v for v in o["stringData"].values()), o["metadata"]["name"]


def test_configmaps_and_claims_referenced_by_pods_exist():
    cms = {o["metadata"]["name"]: o for o in objects("ConfigMap")}
    claims = {o["metadata"]["name"] for o in objects("PersistentVolumeClaim")}
    volumes = (
        [v for _, spec in workloads() for v in spec.get("volumes", [])]
        + VALUES["volumes"]
        + VALUES["migrateDatabaseJob"]["extraVolumes"]
    )
    for v in volumes:
        if "configMap" in v:
            assert v["configMap"]["name"] in cms, v
        if "persistentVolumeClaim" in v:
            assert v["persistentVolumeClaim"]["claimName"] in claims, v
    claim_templates = {
        label: {t["metadata"]["name"] for t in o.get("spec", {}).get("volumeClaimTemplates", [])}
        for label, o in ((f"{o['kind']}/{o['metadata']['name']}", o) for _, o in OBJECTS)
    }
    for label, spec in workloads():
        for c in containers(spec):
            names = {v["name"] for v in spec.get("volumes", [])} | claim_templates.get(label, set())
            assert {m["name"] for m in c.get("volumeMounts", [])} <= names, label


# -------------------------------------------------------------------------------------- GPU encoder


def test_encoder_workloads_run_on_gpu_nodes(tmp_path):
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    job = obj("Job", "soe-encode-20260102t0500z")
    gpu_worker = obj("StatefulSet", "soe-airflow-gpu-worker")
    for o in (job, gpu_worker):
        spec = pod_spec(o)
        c = spec["containers"][0]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1, o["metadata"]["name"]
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
        assert spec["nodeSelector"], o["metadata"]["name"]
        assert c["image"].endswith(":cuda"), "the CUDA variant of deploy/Dockerfile"
        env = load_soe_settings(soe_yaml_text(), tmp_path, plain_env(c))
        assert env.inference.device.startswith("cuda")
    assert job["spec"]["completionMode"] == "Indexed"
    assert int(job["spec"]["completions"]) == int(TEMPLATE_VALUES["SHARDS"])
    args = pod_spec(job)["containers"][0]["args"]
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert s.sequences.num_shards >= 1


def test_airflow_pools_and_queues_match_the_orchestration_settings(tmp_path):
    o = load_soe_settings(soe_yaml_text(), tmp_path).orchestration
    pools = json.loads(obj("ConfigMap", "soe-airflow-pools")["data"]["pools.json"])
    for name, pool in pools.items():
        assert isinstance(pool["slots"], int) and isinstance(pool["description"], str), name
    for pool in (o.encode_pool, o.spark_pool):
        assert pool == "default_pool" or pool in pools, f"pool {pool} is not imported"
    sts = obj("StatefulSet", "soe-airflow-gpu-worker")
    c = pod_spec(sts)["containers"][0]
    cmd = c["command"]
    assert cmd[:3] == ["airflow", "celery", "worker"]
    assert cmd[cmd.index("--queues") + 1].split(",") == [o.encode_queue]
    assert int(cmd[cmd.index("--concurrency") + 1]) == 1
    gpus = sts["spec"]["replicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert pools[o.encode_pool]["slots"] == gpus, "one pool slot per GPU"
    assert o.encode_queue != VALUES["config"]["operators"]["default_queue"]
    # the pools file is imported by the chart's migration Job, from where it is mounted
    args = " ".join(VALUES["migrateDatabaseJob"]["args"])
    mount = VALUES["migrateDatabaseJob"]["extraVolumeMounts"][0]
    assert f"airflow pools import {mount['mountPath']}/pools.json" in args
    # the GPU workers share the chart's secrets and DAG folder
    env = {e["name"]: e for e in c["env"]}
    assert env["AIRFLOW__CORE__DAGS_FOLDER"]["value"] == VALUES["config"]["core"]["dags_folder"]
    assert (
        env["AIRFLOW__CORE__FERNET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == VALUES["fernetKeySecretName"]
    )
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"]["name"]
        == VALUES["data"]["metadataSecretName"]
    )
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == VALUES["data"]["brokerUrlSecretName"]
    )
    assert env["AIRFLOW__CORE__EXECUTOR"]["value"] == VALUES["executor"] == "CeleryExecutor"
    # a task of a lost GPU worker is redelivered by the broker only after the chart's visibility timeout
    visibility = VALUES["config"]["celery_broker_transport_options"]["visibility_timeout"]
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]["value"]) == visibility


def airflow_options(home: Path) -> dict[str, set[str]]:
    """Every Airflow configuration option (core and installed providers): section -> option names."""
    code = (
        "import json; from airflow.configuration import conf; d = conf.configuration_description; "
        "print(json.dumps({k: sorted(v.get('options', {})) for k, v in d.items()}))"
    )
    env = {"AIRFLOW_HOME": str(home), "PATH": "/usr/bin:/bin"}  # a throw-away home: no config leaks in
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {k: set(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def airflow_config_problems(config: dict[str, dict[str, Any]], options: dict[str, set[str]]) -> list[str]:
    """Options of the chart's ``config`` (rendered into airflow.cfg) that Airflow does not know."""
    return [
        f"[{section}] {key}"
        for section, keys in config.items()
        for key in keys
        if key not in options.get(section, set())
    ]


def test_airflow_values_config_options_exist(tmp_path):
    options = airflow_options(tmp_path)
    assert airflow_config_problems(VALUES["config"], options) == []
    broken = {
        "scheduler": {"task_instance_heartbeat_timeot": 300},
        "celery_broker": {"visibility_timeout": 1},
    }
    assert len(airflow_config_problems(broken, options)) == 2


def test_airflow_values_dags_from_the_image_and_spark_connection(tmp_path):
    s = load_soe_settings(soe_yaml_text(), tmp_path)
    dags_folder = VALUES["config"]["core"]["dags_folder"]
    assert dags_folder == f"{IMAGE_HOME}/dags"
    assert {p.name for p in (ROOT / "dags").glob("soe_*.py")} >= {"soe_hourly.py", "soe_training.py"}
    assert VALUES["dags"]["gitSync"]["enabled"] is False and VALUES["dags"]["persistence"]["enabled"] is False
    env = {e["name"]: e["value"] for e in VALUES["env"]}
    conn = json.loads(env[f"AIRFLOW_CONN_{s.orchestration.spark_conn_id.upper()}"])
    master = f"{conn['host']}:{conn['port']}" if conn.get("port") else conn["host"]
    conf = spark_conf(obj("ConfigMap", "soe-spark-conf")["data"]["spark-defaults.conf"])
    assert master == conf["spark.master"] == s.spark.master
    assert conn["extra"]["deploy-mode"] == conf["spark.submit.deployMode"] == "cluster"
    assert conn["extra"]["namespace"] == conf["spark.kubernetes.namespace"] == NAMESPACE
    spark_dir = env["SPARK_CONF_DIR"]
    mount = next(m for m in VALUES["volumeMounts"] if m["mountPath"] == spark_dir)
    assert {v["name"]: v for v in VALUES["volumes"]}[mount["name"]]["configMap"]["name"] == "soe-spark-conf"
    assert VALUES["images"]["airflow"]["repository"].endswith("/soe-airflow")


# ------------------------------------------------------------------------------------------- Spark


def test_spark_on_kubernetes_conf():
    cm = obj("ConfigMap", "soe-spark-conf")
    conf = spark_conf(cm["data"]["spark-defaults.conf"])
    reference = spark_conf((DEPLOY / "spark" / "spark-defaults.conf").read_text())
    assert spark_defaults_problems(conf, reference) == []
    assert spark_defaults_problems({**conf, "spark.serializer": "java"}, reference)
    assert conf["spark.master"].startswith("k8s://")
    sa = conf["spark.kubernetes.authenticate.driver.serviceAccountName"]
    obj("ServiceAccount", sa)
    binding = obj("RoleBinding", sa)
    assert {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in binding["subjects"]
    role = obj("Role", binding["roleRef"]["name"])
    pod_verbs = {v for r in role["rules"] if "pods" in r["resources"] for v in r["verbs"]}
    assert {"create", "delete", "get", "list", "watch"} <= pod_verbs
    for role_ in ("driver", "executor"):
        path = Path(conf[f"spark.kubernetes.{role_}.podTemplateFile"])
        assert str(path.parent) == "/etc/soe-spark" and path.name in cm["data"], role_
    assert conf["spark.kubernetes.file.upload.path"].startswith("file:///mnt/soe/")
    assert (
        conf["spark.kubernetes.driverEnv.SOE_CONFIG"]
        == conf["spark.executorEnv.SOE_CONFIG"]
        == "/etc/soe/soe.yaml"
    )
    assert conf["spark.pyspark.python"] == f"{IMAGE_HOME}/.venv/bin/python"
    assert re.search(r"/soe:cpu$", conf["spark.kubernetes.container.image"])
    env_vars = {
        k.rsplit(".", 1)[1]
        for k in conf
        if k.startswith(("spark.kubernetes.driverEnv.", "spark.executorEnv."))
    }
    assert settings_var_problems({v for v in env_vars if v.startswith("SOE_")}) == []
    # the manual Job mounts the same conf dir it points SPARK_CONF_DIR at
    job = pod_spec(obj("Job", "soe-sequences-20260102t0500z"))
    c = job["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == env["SPARK_CONF_DIR"])
    assert {v["name"]: v for v in job["volumes"]}[mount["name"]]["configMap"]["name"] == "soe-spark-conf"
    assert job["serviceAccountName"] == sa


# -------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_through_bootstrap_and_runs_soe():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    stages = {s["name"]: s for s in dockerfile_stages(text)}
    assert {"deps-cpu", "deps-cuda", "airflow", "runtime"} <= set(stages)
    assert stages["deps"]["base"] == "deps-${VARIANT}", "the variant is a build arg"
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/main_job.sh" in readme
    for script in ("test.sh", "main_job.sh"):
        assert "scripts/bootstrap.sh" in (ROOT / "scripts" / script).read_text(), script
    assert "SOE_EXTRAS-dev" in (ROOT / "scripts" / "bootstrap.sh").read_text(), "bootstrap's extras switch"
    copied_context = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert ".venv" in copied_context and "data" in copied_context


def test_dockerfile_check_fails_on_a_bad_dockerfile():
    bad = (
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\nRUN pip install -e .\n"
        'ENTRYPOINT ["python", "-m", "soe"]\n'
    )
    problems = dockerfile_problems(bad)
    assert any("bootstrap.sh" in p for p in problems)
    assert any("outside scripts/bootstrap.sh" in p for p in problems)
    assert any("ENTRYPOINT" in p for p in problems)
    assert any("package core" in p for p in problems)


def test_hadolint(tmp_path):
    result = hadolint(DOCKERFILE.read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = hadolint("FROM python\nRUN apt-get install -y curl\nENTRYPOINT soe\n", tmp_path)
    assert bad.returncode != 0 and "DL3006" in bad.stdout


# -------------------------------------------------------------------------------------------- docs


def test_deploy_doc_names_real_settings_keys():
    text = DEPLOY_DOC.read_text()
    assert doc_key_problems(text) == []
    assert doc_key_problems("set `redis.nodes` and `spark.master`") == [
        "`redis.nodes`: no field 'nodes' in the redis section"
    ]
    assert doc_key_problems("`refresh.retries`") and doc_key_problems("`soe.flows.hourly`") == []
    for readme in sorted(DEPLOY.rglob("*.md")):
        assert doc_key_problems(readme.read_text()) == [], readme
    for key in (
        "spark.master",
        "spark.launcher",
        "redis.mode",
        "redis.startup_nodes",
        "redis.username",
        "redis.password",
        "redis.tls",
        "inference.device",
        "sequences.num_shards",
        "orchestration.encode_pool",
        "orchestration.encode_queue",
        "orchestration.spark_conn_id",
        "data.root",
        "graph.use_gpu",
        "serve.host",
        "serve.port",
    ):
        assert f"`{key}" in text, f"docs/deploy.md does not name {key}"
    for path in manifest_paths() + [HELM_VALUES, DOCKERFILE]:
        assert str(path.relative_to(ROOT)) in text or path.name in text, (
            f"docs/deploy.md does not mention {path.name}"
        )
