#!/usr/bin/env bash
# The speed benchmark as run on a single-GPU device machine (started with setsid, nothing else running there):
# LightMedSeg presets and every baseline side by side on one card; results and log in /opt/out.
set -u
source benchmarks/device/env.sh
OUT=/opt/out
mkdir -p $OUT
# the GPU-only tests first (CUDA-graph replay equals the eager forward, in nnU-Net's predictor too)
OUT=$OUT bash benchmarks/device/gpu_tests.sh
echo "gpu tests rc=$? $(date -u +%T)"

# the models given as arguments, else all, LightMedSeg and its reference first
MAIN=("$@")
[ $# -gt 0 ] || MAIN=(LightMedSeg-paper "nnU-Net default (PlainConvUNet)" LightMedSeg-tiny LightMedSeg-small
                      LightMedSeg-base LightMedSeg-large "UNETR (MONAI)" "Primus V3-S (nnU-Net)"
                      "SwinUNETR (MONAI, feature 48)")
python3 benchmarks/speed.py --models "${MAIN[@]}" --modes as-shipped eager graphs cudagraphs compile \
    --compile-models LightMedSeg-paper "nnU-Net default (PlainConvUNet)" \
    --prediction --prediction-models LightMedSeg-paper "nnU-Net default (PlainConvUNet)" --profile --out $OUT \
    > $OUT/speed.log 2>&1
echo "speed done $(date -u +%T)"

