#!/usr/bin/env bash
# The GPU check, sized to fit in about ten minutes on one CUDA GPU:
#   1. the tests marked `gpu` (bf16 training, channels-last, device-side batches and augmentation,
#      the decoded cache, predict and serve on CUDA, a one-process NCCL group);
#   2. bench_train.py's limit for VGG16 at 512 (img/s, TFLOP/s, share of bf16 peak), and at 256;
#   3. the GPU ISIC recipe (params-isic-gpu.yaml) trained for as many epochs as fit in
#      TRAIN_BUDGET_S (default 360 s) at the measured rate, then scored on our ISIC split and PH2.
# Without a CUDA GPU it says so and exits 0.
#
#   bash benchmarks/gpu_check.sh [ISIC_DIR] [PH2_DIR]   (default ../shared/data/isic2017-train, ../shared/data/ph2)
# Environment: PYTHON (default python), TRAIN_BUDGET_S, PEAK_TFLOPS (default 989: H100/H200 SXM bf16 dense).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ISIC=${1:-../shared/data/isic2017-train}
PH2=${2:-../shared/data/ph2}
BUDGET=${TRAIN_BUDGET_S:-360}
PEAK=${PEAK_TFLOPS:-989}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check, exiting 0"
    exit 0
fi
"$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}')"

echo "== 1. tests marked gpu"
"$PYTHON" -m pytest -q -m gpu tests || echo "gpu_check: SOME GPU TESTS FAILED (see above); going on with the benchmarks"

echo "== 2. bench_train limit: VGG16 at 512 and 256, bf16, channels-last"
limit=$("$PYTHON" benchmarks/bench_train.py --only limit --backbones vgg16 --sizes 512,256 --batch-size 16 \
    --channels-last true --peak-tflops "$PEAK" | tee /dev/stderr)
rate=$(awk '$1 == "vgg16" && $2 == 256 {print $5; exit}' <<<"$limit")

echo "== 3. params-isic-gpu.yaml for about ${BUDGET} s of training"
if [ ! -d "$ISIC/images" ]; then
    echo "gpu_check: no ISIC data at $ISIC (pass ISIC_DIR): skipping the training run"
    exit 0
fi
# 1,800 training images + 1 augmented copy each = 3,600 a epoch; the loop reaches about half the
# model's limit once validation, the first epoch's decoding and data loading are counted.
epochs=$("$PYTHON" -c "import sys; r = float(sys.argv[1] or 0); print(max(1, int($BUDGET * 0.5 * r / 3600)))" "${rate:-0}")
echo "gpu_check: VGG16 at 256 limit ${rate:-unknown} img/s -> ${epochs} epochs"
ph2=()
[ -d "$PH2/images" ] && ph2=(--ph2 "$PH2")
"$PYTHON" benchmarks/bench_accuracy.py isic --recipe params-isic-gpu.yaml --isic "$ISIC" "${ph2[@]}" \
    --epochs "$epochs" --device cuda --json "${OUT:-.}/gpu_check_accuracy.json"
