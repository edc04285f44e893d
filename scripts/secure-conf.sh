#!/usr/bin/env bash
# Write a Spark conf folder with the secure profile (spark-conf/secure/) and a shared secret:
#
#   scripts/secure-conf.sh DIR            -> DIR/spark-defaults.conf (0600), DIR/log4j2.properties
#   SPARK_CONF_DIR=DIR  for the Master, every Worker, spark-submit and dlpipe (the same DIR on every node)
#
# DIR/spark-defaults.conf = spark-conf/spark-defaults.conf, then spark-conf/secure/spark-defaults.conf
# (a later line wins), then `spark.authenticate.secret`: kept from an existing DIR (so re-running after a
# profile change keeps the cluster's secret), else read from $SPARK_AUTH_SECRET_FILE, else 32 random bytes.
# Standalone clusters need the secret in every node's conf (Spark reads it from there, not from a file
# setting); the folder is 0700 and the file 0600, and dlpipe refuses the secret in its own config.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 1 ] || { echo "usage: scripts/secure-conf.sh DIR" >&2; exit 2; }
DIR=$1
umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
CONF="$DIR/spark-defaults.conf"

SECRET=""
if [ -f "$CONF" ]; then
  SECRET=$(awk '$1 == "spark.authenticate.secret" {print $2}' "$CONF")
fi
if [ -z "$SECRET" ] && [ -n "${SPARK_AUTH_SECRET_FILE:-}" ]; then
  SECRET=$(tr -d '[:space:]' < "$SPARK_AUTH_SECRET_FILE")
  [ -n "$SECRET" ] || { echo "secure-conf: $SPARK_AUTH_SECRET_FILE is empty" >&2; exit 1; }
fi
if [ -z "$SECRET" ]; then
  SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
fi

TMP="$CONF.tmp.$$"
{
  cat spark-conf/spark-defaults.conf
  echo
  cat spark-conf/secure/spark-defaults.conf
  echo
  echo "# Written by scripts/secure-conf.sh: the cluster's shared secret. Never commit or print this file."
  echo "spark.authenticate.secret                 $SECRET"
} > "$TMP"
chmod 600 "$TMP"
mv "$TMP" "$CONF"
cp spark-conf/log4j2.properties "$DIR/log4j2.properties"
echo "secure-conf: wrote $CONF (0600); use SPARK_CONF_DIR=$DIR for the Master, the Workers and every job"
