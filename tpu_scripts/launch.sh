#!/usr/bin/env bash
# Runs one experiment on every worker at once; JAX's runtime joins them into one job.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "Usage: launch.sh [settings] EXPERIMENT [experiment flags...]

Runs 'python experiments/EXPERIMENT.py --workdir=~/runs/EXPERIMENT [flags]' on
all workers. Each worker's output is appended to ~/logs/EXPERIMENT.log there and
streamed back here. Example:
  launch.sh --project my-proj --zone us-west4-a mnist --config.train.num_epochs=3

$COMMON_USAGE"
}

parse_common_args "$@"
if [[ ${#EXTRA_ARGS[@]} -eq 0 ]]; then
  echo "error: name the experiment to run (e.g. mnist); see --help" >&2
  exit 2
fi
experiment="${EXTRA_ARGS[0]}"
flags=("${EXTRA_ARGS[@]:1}")
quoted_flags=""
if [[ ${#flags[@]} -gt 0 ]]; then
  quoted_flags="$(printf ' %q' "${flags[@]}")"
fi
tpu_vm ssh --worker=all --command="mkdir -p ~/logs && cd ~/jaxmodels && \
python experiments/${experiment}.py --workdir=\$HOME/runs/${experiment}${quoted_flags} \
2>&1 | tee -a ~/logs/${experiment}.log"
