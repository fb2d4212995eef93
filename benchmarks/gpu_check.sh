#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md and the CUDA-only tests, for a session lent a GPU machine, in one device call (a
# session has 15 minutes of device time, the machine's start included; a warm machine goes back 30 s after a call,
# so a second call would likely pay a second start):
#
#   here, once:  bash benchmarks/gpu_check.sh --fetch-wheels   # decord, tensorboardX, PyAV wheels -> .whl/ (50 MB)
#   device:      command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 590
#
# Without step names it runs all four (8 min 30 s of step limits, at most 9 min 10 s with their kill margins and the
# wheel install); named steps rerun only those (e.g. "bash benchmarks/gpu_check.sh motion" on a still-warm machine).
# The GPU image has PyTorch, timm, einops and OpenCV without its contrib modules; decord, tensorboardX and PyAV
# (motion_detection reads videos with it) come as wheels (installed under $TMPDIR/mofo_site). OpenCV-contrib's wheel
# would take the transfer past the device's 64 MiB limit, so the motion table there times dis and tvl1_torch (eager
# and compiled, 64 and 256 pairs per call), and the OpenCV TV-L1 rate per core to compare with is the CPU table's.
# The data-pipeline goals are per CPU worker and measured on the CPU (BENCHMARKS.md), so bench_data.py is not run
# here. Each step writes its output to $OUT/NAME.txt (default .device/gpu_check, ignored by git) and a line to
# $OUT/summary.txt as soon as it ends, and has its own time limit, so a slow step costs only its own figures. Exit
# status 1 if any step failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(decord==0.6.0 tensorboardX==2.6.5 av==18.1.0)  # tests/test_scripts.py checks the image lacks no other

if [[ ${1:-} == --fetch-wheels ]]; then
    exec python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi
STEPS=(cuda_tests motion pretrain_step finetune_step)
for name in "$@"; do
    if [[ " ${STEPS[*]} " != *" $name "* ]]; then
        echo "usage: bash benchmarks/gpu_check.sh [--fetch-wheels | STEP...], steps: ${STEPS[*]}" >&2
        exit 2
    fi
done
(($#)) && STEPS=("$@")

OUT=${OUT:-.device/gpu_check}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
SITE=${TMPDIR:-/tmp}/mofo_site
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl || exit 1
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
elif ! python3 -c "import decord, tensorboardX, av" 2> /dev/null; then
    echo "decord, tensorboardX or PyAV is missing: run 'bash benchmarks/gpu_check.sh --fetch-wheels' here and" \
        "carry .whl" >&2
    exit 1
fi
export PYTHONUNBUFFERED=1
FAILED=0

step() {  # NAME LIMIT_S COMMAND...: run COMMAND with a time limit, its output to $OUT/NAME.txt (if NAME is asked for)
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    [[ " ${STEPS[*]} " == *" $name "* ]] || return 0
    echo "== $name: $*"
    timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    ((rc == 0)) || FAILED=1
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)" >> "$OUT/summary.txt"
    tail -n 20 "$OUT/$name.txt"
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
    "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
step cuda_tests 100 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_train_step.py \
    tests/test_flow_torch.py tests/test_masking.py tests/test_hog.py
step motion 160 python3 benchmarks/bench_motion.py --flows tvl1_torch dis --torch_devices cuda --pairs 512 \
    --batch_size 64 256 --torch_modes eager compile --aspect 1
step pretrain_step 180 python3 benchmarks/bench_pretrain_step.py --compile
step finetune_step 70 python3 benchmarks/bench_finetune_step.py
cat "$OUT/summary.txt"
exit "$FAILED"
