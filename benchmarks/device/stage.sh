#!/usr/bin/env bash
# Stage here, git-ignored, what the device calls carry (each call at most 64 MiB):
#   .device/whl-a  SimpleITK, MONAI (the scoring on the device needs it), blosc2 (moved from whl-b: whl-b and the
#                  data together must stay under one call's 64 MiB)
#   .device/whl-b  nnU-Net and the rest
#   .device/data   the raw ACDC dataset, packed (data.sh pack; needs .data/Dataset027_ACDC, a copy of ../shared/data's)
# Usage, from the repository root:  bash benchmarks/device/stage.sh
set -euo pipefail
bash ../shared/tools/device-wheels.sh
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any \
    -d .device/whl-a monai==1.6.1
mv .device/whl-b/blosc2-*.whl .device/whl-a/
[ -e .device/data/acdc.tar.xz ] || bash benchmarks/device/data.sh pack
du -sb .device/whl-a .device/whl-b .device/data
