#!/usr/bin/env bash
# Submit the kernel-size sweep (or the scoring of its checkpoints) as a SLURM job array; settings: slurm/cluster.env.
#
#   slurm/submit.sh train [sbatch options]   one task per (config, seed): `lk_ablate fit`, requeued until it is done
#   slurm/submit.sh eval  [sbatch options]   one task per (config, seed): `lk_ablate robustness` on its checkpoint
#   slurm/submit.sh list                     the task ids with their config, seed and folder
#
# Extra sbatch options go after the mode, e.g. `slurm/submit.sh train --array=3,5` (only tasks 3 and 5),
# `--dependency=afterok:<job>` or `--parsable` (print only the job id). LK_CLUSTER_ENV=<file> picks another settings
# file. The settings are copied to <LK_OUTPUT_ROOT>/logs/ and the jobs read that copy, so editing cluster.env later
# does not change a submitted sweep (requeued tasks included). Without --parsable, train and eval first print on
# stderr the `lk_ablate dashboard` command for the sweep's W&B project and groups.
set -euo pipefail
LK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LK_REPO
# shellcheck source=slurm/lib.sh
source "$LK_REPO/slurm/lib.sh"
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
  train|eval|list) ;;
  *) echo "usage: slurm/submit.sh train|eval|list [sbatch options]" >&2; exit 2 ;;
esac
lk_settings
if [ "$mode" = list ]; then
  for ((t = 0; t < LK_NUM_TASKS; t++)); do lk_task "$t"; echo "$t $LK_TASK_CONFIG seed=$LK_TASK_SEED $LK_TASK_DIR"; done
  exit 0
fi
for c in "${LK_CONFIGS[@]}"; do
  [ -f "$c" ] || { echo "lk_ablate: config $c (LK_CONFIGS in ${LK_CLUSTER_ENV:-slurm/cluster.env}) not found" >&2; exit 2; }
done
[ -x "$LK_PYTHON" ] || command -v "$LK_PYTHON" >/dev/null || {
  echo "lk_ablate: LK_PYTHON=$LK_PYTHON is not an interpreter (run scripts/setup.sh, or set it in cluster.env)" >&2; exit 2; }

mkdir -p "$LK_ROOT/logs"
snapshot=$LK_ROOT/logs/cluster-$(date +%Y%m%d-%H%M%S)-$$.env
cp "${LK_CLUSTER_ENV:-slurm/cluster.env}" "$snapshot"
export LK_CLUSTER_ENV=$snapshot

opts=(--array="0-$(( LK_NUM_TASKS - 1 ))${LK_MAX_PARALLEL:+%$LK_MAX_PARALLEL}" --output="$LK_ROOT/logs/%x_%A_%a.out")
[ -n "$LK_PARTITION" ] && opts+=(--partition="$LK_PARTITION")
[ -n "$LK_ACCOUNT" ] && opts+=(--account="$LK_ACCOUNT")
[ -n "$LK_QOS" ] && opts+=(--qos="$LK_QOS")
if [ "$mode" = train ]; then
  opts+=(--nodes="$LK_NODES" --ntasks-per-node="$LK_TASKS_PER_NODE" --cpus-per-task="$LK_CPUS_PER_TASK"
         --time="$LK_TIME")
  (( LK_GPUS_PER_NODE > 0 )) && opts+=(--gres="gpu:$LK_GPUS_PER_NODE")
  [ -n "$LK_MEM_PER_NODE" ] && opts+=(--mem="$LK_MEM_PER_NODE")
  script=slurm/train_array.sbatch
else
  opts+=(--nodes=1 --ntasks=1 --cpus-per-task="$LK_CPUS_PER_TASK" --time="$LK_EVAL_TIME")
  (( LK_EVAL_GPUS > 0 )) && opts+=(--gres="gpu:$LK_EVAL_GPUS")
  script=slurm/eval_array.sbatch
fi
# The W&B dashboard of this sweep (the configs resolved as `lk_ablate fit` resolves them); never with --parsable,
# whose stdout is the job id alone, and never in the way of the submission.
parsable=0
for a in "$@"; do [ "$a" = --parsable ] && parsable=1; done
if (( ! parsable )) && dashboard=$("$LK_PYTHON" -m lk_ablate.commands.dashboard "${LK_CONFIGS[@]}" -- \
    "${LK_FIT_ARGS[@]}" 2>/dev/null) && [ -n "$dashboard" ]; then
  echo "lk_ablate: once the runs have logged to W&B, build (or update) the sweep's dashboard with:" >&2
  sed 's/^/  /' <<<"$dashboard" >&2
fi
exec sbatch "${opts[@]}" "$@" "$script"
