#!/usr/bin/env bash
# Issue 15's GPU checks, prepared for a session that is lent a GPU machine (15 minutes of
# device time, at most 10 a command): the CUDA-only test paths, then the GPU rows of
# step_cost.py and throughput.py, in parts that each fit one command.
#
#   bash benchmarks/gpu_check.sh tests        # CUDA params of the precision and decode tests (~1-2 min)
#   bash benchmarks/gpu_check.sh step18       # step_cost rows: ResNet-18 at 32 px, batch 32 and 128, bf16
#   bash benchmarks/gpu_check.sh step50       # step_cost rows: ResNet-50 at 224 px (ImageNet stem), batch 32 and 128, bf16
#   bash benchmarks/gpu_check.sh throughput   # throughput.py on the GPU (ResNet-50, 224 px, batch 32)
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh all   # a dry run of every part on a CPU
#
# On the device machine python3 has torch, torchvision, pytest, pyarrow, PIL and PyYAML but
# not webdataset and braceexpand: fetch their wheels here once (.whl/ is git-ignored),
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       webdataset==1.0.2 braceexpand
# and give the device tool `carry: [".whl"]`; this script installs them under /tmp/site.
# Results go to $OUT when it is set (the device tool brings them back; copy them into
# benchmarks/results/), else to benchmarks/results/. Each part prints what it ran.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    tests|step18|step50|throughput|all) ;;
    *) echo "usage: bash benchmarks/gpu_check.sh tests|step18|step50|throughput|all" >&2; exit 2 ;;
esac
DEVICE=${DEVICE:-cuda}
PY=${PY:-$(command -v python3)}
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=.venv/bin/python  # the dry run: this project's venv
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "${QUICK:-0}" = 1 ]; then STEPS=5; IMAGES=400; else STEPS=20; IMAGES=1500; fi
VARIANTS=("CE" "MSLC soft, exact (forward-mode JVP)" "MSLC soft, lagged (forward-mode JVP)"
          "MSLC soft, last layer + every 5")
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

part_tests() {
    # on a GPU the parametrized tests add their cuda cases; -k keeps only those there
    local sel=()
    [ "$DEVICE" = cuda ] && sel=(-k cuda)
    "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_device_decode.py "${sel[@]}" 2>&1 \
        | tee "$RES/gpu_check_tests.log"
}

part_step() {  # ARCH SIZE STEM: batch 32 and 128, each variant in one round (a GPU drifts far less than this CPU)
    local rc=0 arch=$1 size stem=$3 batch
    for batch in 32 128; do
        size=$2
        [ "${QUICK:-0}" = 1 ] && { size=32; batch=$((batch / 16)); }  # the dry run on a CPU: tiny batches
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

case "${1:-}" in
    tests) part_tests ;;
    step18) part_step resnet18 32 cifar ;;
    step50) part_step resnet50 224 imagenet ;;
    throughput) part_throughput ;;
    all) part_tests && part_step resnet18 32 cifar && part_step resnet50 224 imagenet && part_throughput ;;
esac
