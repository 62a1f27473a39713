#!/usr/bin/env bash
# Deletes the TPU VM or pod slice (billing stops).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "Usage: delete.sh [settings]

Deletes TPU VM \$TPU_NAME without asking.

$COMMON_USAGE"
}

parse_common_args "$@"
no_extra_args
tpu_vm delete --quiet
