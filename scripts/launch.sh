# shellcheck shell=bash
# Sourced (not run) by the stage scripts scripts/<dataset>/<stage>.sh, from the repository root.
#
#   launch ENTRY.py [ARGS...]   runs a training entry point with one process per GPU:
#     - inside a SLURM allocation (sbatch, salloc) with srun on PATH: `srun python ENTRY.py ARGS`, one task per GPU
#       as the #SBATCH lines ask (--ntasks-per-node = GPUs per node), or $GPUS tasks per node in an allocation that
#       sets no tasks per node (a plain `salloc --gres=gpu:8`); the Python code takes its rank, world size and GPU
#       from SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and the master address from the job's nodes;
#     - anywhere else (plain `bash` on one node): `torchrun --standalone --nproc_per_node $GPUS ENTRY.py ARGS`.
#     Under sbatch, the job requeues itself when its time limit is near (see `requeueable`).
#   requeueable CMD [ARGS...]   runs CMD; in a SLURM batch job, a USR1 to this shell (the stage scripts ask for
#                   one before the time limit: #SBATCH --signal=B:USR1@300) requeues the job with `scontrol requeue`
#                   (#SBATCH --requeue), and its next start resumes from the run's newest checkpoint. There CMD runs
#                   in the background, so that the trap fires at once (INT and TERM to this shell are passed on
#                   to it as TERM); its exit status is returned. From a terminal (an salloc shell) CMD runs in the
#                   foreground: Ctrl-C reaches it.
#   launch_tasks    prints how many processes `launch` starts (for scripts that size the batch by it).
#   update_freq     prints the --update_freq that makes $TOTAL_BATCH videos per optimiser step from $BATCH_SIZE per
#                   process on launch_tasks processes ($UPDATE_FREQ, where set, as it is); where no whole number of
#                   steps reaches it, names both and returns 2, which ends a script calling UPDATE_FREQ=$(update_freq)
#                   under set -e.
#   EXTRA           the words of $EXTRA_ARGS (split on whitespace, over all its lines, no globbing), for the
#                   scripts to append last: argparse keeps the last value of a flag, so EXTRA_ARGS overrides the
#                   script's settings. Scripts expand it as ${EXTRA[@]+"${EXTRA[@]}"}: bash before 4.4 takes an
#                   empty array as unset (set -u).
#   refuse_extra FLAG=VAR...   exits 2 where EXTRA_ARGS sets one of these flags (or a prefix argparse would take
#                   for it): the script derives other settings from VAR (the output folder's name and its tb/ log
#                   folder, the accumulation steps), which the flag would leave behind; the message names VAR.
#   model_tag MODEL   the model's size in default folder names: vitb for pretrain_videomae_base_patch16_224 (vits,
#                   vitl, vith, vitg; vitmini for the mini test model).
#   epic_videos CSV...   "<participant>/videos/<video>.MP4 START LENGTH" for every row of EPIC-KITCHENS-100
#                   annotation csvs: a VideoMAE V2 list of the action segments in the long videos; with
#                   EPIC_VIDEO_TEMPLATE set (e.g. clips/{narration_id}.mp4, pre-trimmed clips), the files it names.

# shellcheck disable=SC2034  # used by the scripts that source this file
read -r -d "" -a EXTRA <<< "${EXTRA_ARGS:-}" || true  # -d "": every line (read stops at its delimiter)

under_srun() { [[ -n "${SLURM_JOB_ID:-}" ]] && command -v srun > /dev/null; }

launch_tasks() {
    if under_srun && [[ -n "${SLURM_NTASKS_PER_NODE:-}" || -z "${GPUS:-}" ]]; then
        echo "${SLURM_NTASKS:?SLURM_NTASKS unset in the allocation}"
    elif under_srun; then
        echo $(( ${SLURM_NNODES:-1} * GPUS ))  # launch asks for GPUS tasks per node
    else
        echo "${GPUS:?set GPUS to the number of GPUs}"
    fi
}

update_freq() {
    # The --update_freq (gradient accumulation steps) that makes TOTAL_BATCH videos per optimiser step from
    # BATCH_SIZE per task on the tasks launch starts; UPDATE_FREQ, where set, is taken as it is.
    if [[ -n "${UPDATE_FREQ:-}" ]]; then
        echo "$UPDATE_FREQ"
        return
    fi
    local tasks steps
    tasks=$(launch_tasks)
    steps=$(( TOTAL_BATCH / (BATCH_SIZE * tasks) ))
    if (( steps < 1 || steps * BATCH_SIZE * tasks != TOTAL_BATCH )); then
        echo "$0: TOTAL_BATCH $TOTAL_BATCH is not BATCH_SIZE $BATCH_SIZE x $tasks tasks x whole steps; set" \
            "TOTAL_BATCH or UPDATE_FREQ" >&2
        return 2
    fi
    echo "$steps"
}

requeueable() {
    if [[ -z "${SLURM_JOB_ID:-}" || -t 0 ]]; then  # sbatch's stdin is /dev/null
        "$@"
        return
    fi
    # A refused requeue must not end the script (set -e): the job then runs on to its limit.
    trap 'echo "time limit near: requeueing SLURM job $SLURM_JOB_ID" >&2
          scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: resubmit the job by hand" >&2' USR1
    "$@" &
    local pid=$! status=0
    # A background command ignores SIGINT: pass an interrupt (scancel --signal=INT) or a TERM on as a TERM.
    trap 'kill -TERM "$pid" 2> /dev/null' INT TERM
    while kill -0 "$pid" 2> /dev/null; do
        wait "$pid" || true  # returns early when the trap runs
    done
    wait "$pid" || status=$?  # bash keeps the status of a child it has already reaped
    return "$status"
}

launch() {
    if under_srun; then
        # srun no longer inherits sbatch's --cpus-per-task (SLURM 22.05+): pass it on for the data loaders.
        local tasks=()
        if [[ -z "${SLURM_NTASKS_PER_NODE:-}" && -n "${GPUS:-}" ]]; then
            tasks=(--ntasks-per-node="$GPUS")  # salloc without --ntasks-per-node: one task per GPU all the same
        fi
        # One intra-op thread per task, as torchrun sets it and VideoMAE's scripts do (the loaders have workers).
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} requeueable srun --kill-on-bad-exit=1 \
            ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} ${tasks[@]+"${tasks[@]}"} python "$@"
    else  # also a batch job without srun: one node
        requeueable torchrun --standalone --nproc_per_node "${GPUS:?set GPUS to the number of GPUs}" "$@"
    fi
}

model_tag() {
    local size=${1#pretrain_videomae_}
    size=${size#vit_}
    size=${size%%_*}
    case $size in
        small | base | large | huge | giant) echo "vit${size:0:1}" ;;
        *) echo "vit${size}" ;;
    esac
}

refuse_extra() {
    local word pair
    for word in ${EXTRA[@]+"${EXTRA[@]}"}; do
        word=${word%%=*}
        [[ $word == --?* ]] || continue
        for pair in "$@"; do
            if [[ ${pair%%=*} == "$word"* ]]; then
                echo "$0: EXTRA_ARGS sets $word: set ${pair#*=} instead (the script derives other settings from it)" >&2
                exit 2
            fi
        done
    done
}

epic_videos() {
    # Read as fine-tuning reads the csvs (datasets.read_epic_list), with the scripts' EPIC_VIDEO_TEMPLATE.
    python scripts/epic_video_list.py "$@" ${EPIC_VIDEO_TEMPLATE:+--epic_video_template "$EPIC_VIDEO_TEMPLATE"}
}
