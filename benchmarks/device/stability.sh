#!/usr/bin/env bash
# The bf16 / fp16 stability runs (benchmarks/stability.py, 2000 iterations of nnUNetTrainerLightMedSeg as it ships)
# on the ACDC that a session has planned in $W, one process per dtype, in the background (the caller waits):
#   source benchmarks/device/stability.sh; start_stability bf16 fp16   # their process ids appended to PIDS
start_stability() {
    for DTYPE in "$@"; do
        nnUNet_raw=/opt/data nnUNet_preprocessed=$W/preprocessed nnUNet_results=$W/stability_results_$DTYPE \
        python3 benchmarks/stability.py -d 27 -tr nnUNetTrainerLightMedSeg --iterations 2000 --dtypes $DTYPE \
            --out $OUT/stability_acdc_$DTYPE.json > $W/stability_$DTYPE.log 2>&1 &
        PIDS+=($!)
    done
}
