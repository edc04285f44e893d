#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript, and on standalone
# spark.worker.resource.gpu.discoveryScript): prints the node's GPUs as Spark's resource JSON,
#   {"name": "gpu", "addresses": ["0","1"]}
# The addresses are nvidia-smi's indices; a barrier task's rank sees only its own GPU through
# CUDA_VISIBLE_DEVICES. The same script as Spark's examples/src/main/scripts/getGpusResources.sh,
# failing loudly when nvidia-smi is missing (a silent empty list leaves every task without a GPU).
set -euo pipefail
command -v nvidia-smi >/dev/null || { echo "getGpusResources.sh: nvidia-smi not found on $(hostname)" >&2; exit 1; }
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | sed '/^$/d' | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
