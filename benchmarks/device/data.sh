#!/usr/bin/env bash
# The raw ACDC dataset and the second wheel folder in one device call: its .nii.gz files are gzip; without it and
# packed with xz they take 47 MB instead of 56 MB, which leaves room for .device/whl-b (17 MB) under one call's 64 MiB.
#   here:   bash benchmarks/device/data.sh pack    (.data/Dataset027_ACDC -> .device/data/acdc.tar.xz, ~3 minutes)
#   there:  bash benchmarks/device/data.sh unpack  (-> /opt/data/Dataset027_ACDC, .nii.gz again, seconds)
set -euo pipefail
case "${1:-}" in
pack)
    tmp=$(mktemp -d)
    cp -r .data/Dataset027_ACDC "$tmp/"
    find "$tmp" -name '*.nii.gz' -print0 | xargs -0 gunzip
    mkdir -p .device/data
    tar cf - -C "$tmp" Dataset027_ACDC | xz -9e -T0 > .device/data/acdc.tar.xz
    rm -rf "$tmp"
    du -sh .device/data/acdc.tar.xz ;;
unpack)
    mkdir -p /opt/data
    tar xJf .device/data/acdc.tar.xz -C /opt/data
    find /opt/data/Dataset027_ACDC -name '*.nii' -print0 | xargs -0 -P "$(nproc)" gzip -1
    ls /opt/data/Dataset027_ACDC/imagesTr | wc -l ;;
*)
    echo "usage: bash benchmarks/device/data.sh pack|unpack" >&2; exit 2 ;;
esac
