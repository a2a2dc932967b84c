#!/usr/bin/env bash
# The GPU checks, sized for one short GPU visit (15 minutes of device time with the machine's
# start, at most 10 a command): two parts of about 6 minutes, each one device command, each
# of whose steps runs even when an earlier one fails (the exit status says whether all passed).
#
#   bash benchmarks/gpu_check.sh a    # the CUDA cases of the tests (a short run of the real loop with bf16,
#                                     # channels-last and GPU decode among them), then the ResNet-18 step rows
#   bash benchmarks/gpu_check.sh b    # the ResNet-50 step rows (224 px, batch 32 and 128), throughput.py, decode.py
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh a   # the dry run on a CPU (make test runs it)
#
# (tests, step18, step50, throughput and decode run one step alone; all runs a then b.) Every result
# is written as it is measured (each step_cost and throughput row as soon as it exists), so a
# timeout keeps what ran; the test log and each part's console go into $RES/gpu_check_PART.log.
#
# On the device machine python3 has torch, torchvision, pytest, pyarrow, PIL and PyYAML but
# not webdataset and braceexpand: fetch their wheels here once (.whl/ is git-ignored),
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       webdataset==1.0.2 braceexpand
# (and, for decode.py's TorchCodec rows, a torchcodec wheel built for the device's torch: without
# it those rows are left out and the torchvision/PIL rows still run)
# and give the device tool `carry: [".whl"]`; this script installs them under /tmp/site.
# Results go to $OUT when it is set (the device tool brings them back; copy them into
# benchmarks/results/), else to benchmarks/results/. Each part prints what it ran.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    a|b|tests|step18|step50|throughput|decode|all) ;;
    *) echo "usage: bash benchmarks/gpu_check.sh a|b  (or one step: tests|step18|step50|throughput|decode; all: a then b)" >&2
       exit 2 ;;
esac
DEVICE=${DEVICE:-cuda}
if [ -z "${PY:-}" ]; then
    PY=$(command -v python3)
    [ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=.venv/bin/python  # the dry run: this project's venv
fi
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "${QUICK:-0}" = 1 ]; then STEPS=2; IMAGES=240; else STEPS=20; IMAGES=1500; fi  # QUICK: that it runs, not figures
VARIANTS=("CE" "MSLC soft, exact (forward-mode JVP)" "MSLC soft, lagged (forward-mode JVP)"
          "MSLC soft, last layer + every 5")
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

part_tests() {
    # on a GPU the parametrized tests add their cuda cases; -k keeps only those there
    local sel=()
    [ "$DEVICE" = cuda ] && sel=(-k cuda)
    [ "${QUICK:-0}" = 1 ] && sel=(-k "short_run or refuses or auto_takes")  # the dry run: make test runs them all
    "$PY" -m pytest -q -p no:cacheprovider tests/pipeline/training/test_precision.py tests/pipeline/training/test_device_decode.py "${sel[@]}"
}

part_step() {  # ARCH SIZE STEM: batch 32 and 128, each variant in one round (a GPU drifts far less than this CPU)
    local rc=0 arch=$1 size stem=$3 batch batches=(32 128)
    [ "${QUICK:-0}" = 1 ] && batches=(2)  # the dry run on a CPU: one tiny batch, to see that it runs
    for batch in "${batches[@]}"; do
        size=$2
        [ "${QUICK:-0}" = 1 ] && size=32
        "$PY" benchmarks/step_cost.py --device "$DEVICE" --arch "$arch" --size "$size" --stem "$stem" --batch "$batch" \
            --precision "$([ "$DEVICE" = cuda ] && echo bf16 || echo fp32)" --steps "$STEPS" --repeat 1 \
            --variants "${VARIANTS[@]}" --out "$RES/step_cost_gpu_${arch}_${size}_b${batch}" || rc=1
    done
    return $rc
}

part_throughput() {
    "$PY" benchmarks/throughput.py --device "$DEVICE" --steps "$STEPS" --images "$IMAGES" \
        --out "$RES/throughput_gpu"
}

part_decode() {  # JPEG decode: PIL, torchvision and (where installed) TorchCodec, on the CPU and the device
    if [ "${QUICK:-0}" = 1 ]; then
        "$PY" benchmarks/decode.py --device "$DEVICE" --images 20 --rounds 1 --out "$RES/decode_gpu"
    else
        "$PY" benchmarks/decode.py --device "$DEVICE" --out "$RES/decode_gpu"
    fi
}

run_steps() {  # each step whatever the one before did; the status is 1 if any failed
    local rc=0 step
    for step in "$@"; do
        echo "== $step" && $step || { echo "== $step FAILED"; rc=1; }
    done
    return $rc
}
step18() { part_step resnet18 32 cifar; }
step50() { part_step resnet50 224 imagenet; }

case "${1:-}" in
    a) run_steps part_tests step18 2>&1 | tee "$RES/gpu_check_a.log"; exit "${PIPESTATUS[0]}" ;;
    b) run_steps step50 part_throughput part_decode 2>&1 | tee "$RES/gpu_check_b.log"; exit "${PIPESTATUS[0]}" ;;
    tests) part_tests ;;
    step18) step18 ;;
    step50) step50 ;;
    throughput) part_throughput ;;
    decode) part_decode ;;
    all) run_steps part_tests step18 step50 part_throughput part_decode ;;
esac
