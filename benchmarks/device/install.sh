#!/usr/bin/env bash
# Install one staged wheel folder (.device/whl-a: SimpleITK, MONAI, blosc2; .device/whl-b: nnU-Net and the rest) into
# /opt/site. Each device call carries at most 64 MiB, so the wheels travel in two calls (see README.md here).
# pip --target does not merge into folders that exist (it warned "Target directory /opt/site/bin already exists" and
# left out nnU-Net's commands), so each folder installs into a fresh target that is then copied over /opt/site.
set -euo pipefail
tmp=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$tmp" "$1"/*.whl
mkdir -p /opt/site
cp -a "$tmp"/. /opt/site/
rm -rf "$tmp"
