# Shared by slurm/submit.sh and the sbatch scripts (sourced): the settings and the array task -> (config, seed) map.

# Read the settings (LK_CLUSTER_ENV, default slurm/cluster.env) from the repository root LK_REPO.
lk_settings() {
  cd "${LK_REPO:?LK_REPO is not set: submit with slurm/submit.sh}"
  # shellcheck disable=SC1090
  source "${LK_CLUSTER_ENV:-slurm/cluster.env}"
  LK_NUM_TASKS=$(( ${#LK_CONFIGS[@]} * ${#LK_SEEDS[@]} ))
  LK_TASKS_PER_NODE=$(( LK_GPUS_PER_NODE > 0 ? LK_GPUS_PER_NODE : 1 ))
  LK_ROOT=$(realpath -m "$LK_OUTPUT_ROOT")
}

# Array task $1 -> LK_TASK_CONFIG, LK_TASK_SEED, LK_TASK_NAME (<config name>/seed<seed>), LK_TASK_DIR.
lk_task() {
  local task=$1 n=${#LK_SEEDS[@]}
  if (( task < 0 || task >= LK_NUM_TASKS )); then
    echo "lk_ablate: array task $task is outside 0..$(( LK_NUM_TASKS - 1 )) (${#LK_CONFIGS[@]} configs x $n seeds)" >&2
    return 1
  fi
  LK_TASK_CONFIG=${LK_CONFIGS[task / n]}
  LK_TASK_SEED=${LK_SEEDS[task % n]}
  LK_TASK_NAME=$(basename "$LK_TASK_CONFIG" .yaml)/seed$LK_TASK_SEED
  LK_TASK_DIR=$LK_ROOT/$LK_TASK_NAME
}

# In a running array task: settings, the task's run, the site's set-up code, and a line in <task>/slurm_starts.log.
lk_array_task() {
  lk_settings
  lk_task "${SLURM_ARRAY_TASK_ID:?not an array task: submit with slurm/submit.sh}"
  if [ -n "${LK_SETUP:-}" ]; then eval "$LK_SETUP"; fi
  mkdir -p "$LK_TASK_DIR"
  local log
  log=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -n1)
  if [ -n "$log" ]; then ln -sfn "$log" "$LK_TASK_DIR/$1.slurm.out"; fi
  echo "$(date -Is) $1 job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} restart ${SLURM_RESTART_COUNT:-0}" \
    "on $(hostname -s): $LK_TASK_CONFIG seed $LK_TASK_SEED" | tee -a "$LK_TASK_DIR/slurm_starts.log"
}
