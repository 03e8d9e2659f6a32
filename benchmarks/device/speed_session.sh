#!/usr/bin/env bash
# The speed benchmark as run on a single-GPU device machine (started with setsid, nothing else running there):
# LightMedSeg presets and every baseline side by side on one card; results and log in /opt/out.
set -u
source benchmarks/device/env.sh
OUT=/opt/out
mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt
# the GPU-only tests first (CUDA-graph replay equals the eager forward, in nnU-Net's predictor too)
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$? $(date -u +%T)"

# the models given as arguments, else all, LightMedSeg and its reference first
MAIN=("$@")
[ $# -gt 0 ] || MAIN=(LightMedSeg-paper "nnU-Net default (PlainConvUNet)" LightMedSeg-tiny LightMedSeg-small
                      LightMedSeg-base LightMedSeg-large "UNETR (MONAI)" "Primus V3-S (nnU-Net)"
                      "SwinUNETR (MONAI, feature 48)")
python3 benchmarks/speed.py --models "${MAIN[@]}" --modes eager graphs cudagraphs compile \
    --compile-models LightMedSeg-paper "nnU-Net default (PlainConvUNet)" \
    --prediction --prediction-models LightMedSeg-paper "nnU-Net default (PlainConvUNet)" --profile --out $OUT \
    > $OUT/speed.log 2>&1
echo "speed done $(date -u +%T)"

