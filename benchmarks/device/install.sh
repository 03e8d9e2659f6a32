#!/usr/bin/env bash
# Install one staged wheel folder (.device/whl-a: SimpleITK, .device/whl-b: nnU-Net and the rest) into /opt/site.
# Each device call carries at most 64 MiB, so the wheels travel in two calls (see README.md here).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /opt/site "$1"/*.whl
