#!/usr/bin/env bash
# Container command of the Spark driver and executor pods when Spark runs on Kubernetes with the SoE image
# (spark.kubernetes.{driver,executor}.podTemplateFile set it; see deploy/k8s/base/30-spark.yaml).
#
# Spark's Kubernetes backend starts its pods with the arguments `driver --properties-file F --class C APP ARGS`
# or `executor` (the executor's settings come as SPARK_* environment variables). The SoE image has Spark as
# the pyspark wheel in its venv rather than a Spark distribution, so this script does what a Spark image's
# entrypoint does for those two roles; anything else is run as given.
set -euo pipefail

: "${SPARK_HOME:=$(/opt/soe/.venv/bin/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
export SPARK_HOME
: "${JAVA_HOME:=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")}"
export JAVA_HOME

role=${1:-}
case "$role" in
  driver)
    shift
    # client mode inside the driver pod: the submitter (Airflow worker or the Job) ran --deploy-mode cluster
    exec "$SPARK_HOME/bin/spark-submit" --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    # JVM options the driver passes as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... (module opens, ports), in order
    java_opts=()
    for i in $(compgen -e | sed -n 's/^SPARK_JAVA_OPT_\([0-9]\+\)$/\1/p' | sort -n); do
      name="SPARK_JAVA_OPT_${i}"
      java_opts+=("${!name}")
    done
    classpath="${SPARK_CONF_DIR:-/opt/spark/conf}:${SPARK_HOME}/jars/*${SPARK_EXTRA_CLASSPATH:+:$SPARK_EXTRA_CLASSPATH}"
    exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
      "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}" \
      -cp "$classpath" org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID" --podName "$SPARK_EXECUTOR_POD_NAME"
    ;;
  *)
    exec "$@"
    ;;
esac
