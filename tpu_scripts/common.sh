#!/usr/bin/env bash
# Shared by the tpu_scripts: settings from flags or environment, and a runner that
# prints the exact cloud command (always) and runs it (unless --dry-run).
# No credentials live here: gcloud uses the account you logged in with.

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
TPU_NAME="${TPU_NAME:-jaxmodels}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"
TPU_VERSION="${TPU_VERSION:-v2-alpha-tpuv5-lite}"
DRY_RUN=0
EXTRA_ARGS=()

# shellcheck disable=SC2034  # Used by the scripts that source this file.
COMMON_USAGE="Settings (flag or environment variable):
  --project PROJECT            Google Cloud project              (PROJECT, required)
  --zone ZONE                  e.g. us-west4-a                   (ZONE, required)
  --name TPU_NAME              TPU VM or pod slice name          (TPU_NAME, default: jaxmodels)
  --accelerator-type TYPE      e.g. v5litepod-8, v4-32           (ACCELERATOR_TYPE, default: v5litepod-8)
  --version VERSION            TPU software version              (TPU_VERSION, default: v2-alpha-tpuv5-lite)
  --dry-run                    print the cloud commands, run nothing
  -h, --help                   this help"

parse_common_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --project) PROJECT="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --name) TPU_NAME="$2"; shift 2 ;;
      --accelerator-type) ACCELERATOR_TYPE="$2"; shift 2 ;;
      --version) TPU_VERSION="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; EXTRA_ARGS+=("$@"); break ;;
      *) EXTRA_ARGS+=("$1"); shift ;;
    esac
  done
  if [[ -z "$PROJECT" || -z "$ZONE" ]]; then
    echo "error: set --project and --zone (or PROJECT and ZONE); see --help" >&2
    exit 2
  fi
}

# Prints the command, shell-quoted, then runs it unless --dry-run.
run() {
  printf '%q ' "$@" | sed 's/ $//'
  echo
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

tpu_vm() {
  # gcloud's TPU VM commands with this run's project and zone.
  local verb="$1"
  shift
  run gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" "$@"
}

no_extra_args() {
  if [[ ${#EXTRA_ARGS[@]} -gt 0 ]]; then
    echo "error: unexpected arguments: ${EXTRA_ARGS[*]}; see --help" >&2
    exit 2
  fi
}
