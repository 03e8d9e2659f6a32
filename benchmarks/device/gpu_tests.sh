#!/usr/bin/env bash
# The GPU-only tests (tests/test_gpu*.py; everywhere else they are skipped) on a device machine, with the
# environment of env.sh (after install.sh, see README.md here). Log in $OUT/gpu_tests.log (default /opt/out);
# the exit status is pytest's, or 2 when torch sees no GPU (the tests would only be skipped).
set -u
source benchmarks/device/env.sh
OUT=${OUT:-/opt/out}
mkdir -p "$OUT"
if ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_tests.sh: torch sees no CUDA device here" | tee "$OUT/gpu_tests.log"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu*.py > "$OUT/gpu_tests.log" 2>&1
status=$?
tail -n 3 "$OUT/gpu_tests.log"
exit $status
