#!/usr/bin/env bash
# Creates a TPU VM or pod slice (a multi-host slice when the type has more chips than one host).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "Usage: create.sh [settings] [--spot]

Creates TPU VM \$TPU_NAME of \$ACCELERATOR_TYPE. Extra arguments go to
'gcloud compute tpus tpu-vm create' (e.g. --spot).

$COMMON_USAGE"
}

parse_common_args "$@"
tpu_vm create --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION" \
  ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
