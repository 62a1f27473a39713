#!/usr/bin/env bash
# Installs this checkout's committed code and JAX for TPU on every worker of the VM or slice.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "Usage: setup.sh [settings]

Packs HEAD of this checkout (git archive), copies it to every worker, and runs
pip install 'jax[tpu]' and 'jaxmodels[tf]' there.

$COMMON_USAGE"
}

parse_common_args "$@"
no_extra_args
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archive="${TMPDIR:-/tmp}/jaxmodels.tar.gz"
run git -C "$repo_root" archive --format=tar.gz --prefix=jaxmodels/ -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:~/jaxmodels.tar.gz" \
  --project="$PROJECT" --zone="$ZONE" --worker=all
tpu_vm ssh --worker=all --command="rm -rf ~/jaxmodels && tar -xzf ~/jaxmodels.tar.gz -C ~ \
&& pip install -U 'jax[tpu]' && pip install -e ~/jaxmodels'[tf]'"
