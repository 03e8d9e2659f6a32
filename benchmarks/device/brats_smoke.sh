#!/usr/bin/env bash
# BraTS-mini smoke run on a device machine (started with setsid, raw dataset at /opt/data/Dataset137_BraTSmini; on a
# machine without GPUs, one job at a time on the CPU): the region-based, two-channel path end to end. One case is
# held out as a labelled test folder; LightMedSeg trains FOLDS (default all 5) of the other five cases, nnU-Net
# validates each fold, the ensemble of the folds predicts the held-out case, and MONAI scores WT / TC / ET. Six cases
# exercise the path; they support no accuracy claim.
# Results in /opt/out, /opt/brats/DONE when finished.
set -u
source benchmarks/device/env.sh
OUT=/opt/out W=/opt/brats SRC=/opt/data/Dataset137_BraTSmini RAW=/opt/brats/raw/Dataset137_BraTSmini TEST=/opt/brats/test
EPOCHS=${EPOCHS:-5} ITERS=${ITERS:-100} HELD_OUT=${HELD_OUT:-brats_2013_pat0006_1}
mkdir -p $OUT $RAW/imagesTr $RAW/labelsTr $TEST/imagesTs $TEST/labelsTs
rm -f $W/DONE
for f in $SRC/imagesTr/*.nii.gz $SRC/labelsTr/*.nii.gz; do
    sub=$(basename $(dirname $f)); case $(basename $f) in
        $HELD_OUT*) ln -sf $f $TEST/${sub/Tr/Ts}/ ;;
        *) ln -sf $f $RAW/$sub/ ;;
    esac
done
python3 -c "import json; d = json.load(open('$SRC/dataset.json')); d['numTraining'] = 5; \
json.dump(d, open('$RAW/dataset.json', 'w'), indent=2)"
export nnUNet_n_proc_DA=${DA_WORKERS:-3} nnUNet_compile=f nnUNet_def_n_proc=2
FOLDS=(${FOLDS:-0 1 2 3 4})
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)  # none: one job at a time on the CPU
JOBS_PER_GPU=$(( GPUS ? (${#FOLDS[@]} + GPUS - 1) / GPUS : 1 ))
nice -n 5 python3 benchmarks/accuracy.py --raw $RAW --work $W --epochs $EPOCHS --iterations $ITERS --gpus $GPUS \
    --jobs-per-gpu $JOBS_PER_GPU --processes $(( $(nproc) < 8 ? $(nproc) : 8 )) --trainers nnUNetTrainerLightMedSeg \
    --folds "${FOLDS[@]}" --test $TEST --smoke-test --name bratsmini_smoke --out $OUT > $W/brats.log 2>&1
echo "brats done $(date -u +%T)"
touch $W/DONE
