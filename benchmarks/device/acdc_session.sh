#!/usr/bin/env bash
# ACDC on one GPU as run on the device machine (started with setsid, raw dataset at /opt/data/Dataset027_ACDC):
# plan and preprocess, then at once the accuracy table (fold 0), the bf16 / fp16 stability runs, the data-efficiency
# runs and the ablation runs (these two at lower CPU priority); last the tables that combine several invocations.
# Results in /opt/out, /opt/acc/DONE when finished. One epoch budget for every run: EPOCHS x ITERS iterations.
set -u
source benchmarks/device/env.sh
OUT=/opt/out W=/opt/acc RAW=/opt/data/Dataset027_ACDC
EPOCHS=${EPOCHS:-10} ITERS=${ITERS:-100}
# which runs: a subset of "main stability fractions ablations" (a machine lasts 30 minutes, a call 10)
RUNS=" ${RUNS:-main stability fractions ablations} "
wants() { [[ $RUNS == *" $1 "* ]]; }
DA_WORKERS=${DA_WORKERS:-2}
mkdir -p $OUT $W/tmp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt
ACC=(python3 benchmarks/accuracy.py --raw $RAW --work $W --epochs $EPOCHS --iterations $ITERS --gpus 1
     --processes 16 --out $OUT)
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg --name plan --plan-only > $W/plan.log 2>&1
echo "planned $(date -u +%T)"
# many jobs at once, each with two augmentation workers: the 16 CPUs, not the GPU, bound this machine
export nnUNet_n_proc_DA=$DA_WORKERS nnUNet_compile=f nnUNet_def_n_proc=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
ABLATIONS=(noAnchors mlpAnchors noLSPM noFiLM noTextureRouting noSkipRouter noPositionBias noAdaptiveDecoder noGhost)
wants fractions && nice -n 10 "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 --train-fractions 0.25 0.5 \
    --jobs-per-gpu 4 --out $W/tmp --name acdc_data_efficiency_tmp > $W/fractions.log 2>&1 &
# the data-efficiency run appends its folds to splits_final.json; the others rewrite that file, so they wait
for _ in $(seq 60); do
    wants fractions || break
    python3 -c "import json, sys; sys.exit(len(json.load(open('$W/preprocessed/${RAW##*/}/splits_final.json'))) <= 5)" \
        2>/dev/null && break
    sleep 2
done
wants main && "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer nnUNetTrainerUNETR --folds 0 --jobs-per-gpu 3 \
    --name acdc_fold0 > $W/main.log 2>&1 &
for DTYPE in bf16 fp16; do
    wants stability || break
    nnUNet_raw=/opt/data nnUNet_preprocessed=$W/preprocessed nnUNet_results=$W/stability_results_$DTYPE \
    python3 benchmarks/stability.py -d 27 -tr nnUNetTrainerLightMedSeg --iterations 2000 --dtypes $DTYPE \
        --out $OUT/stability_$DTYPE.json > $W/stability_$DTYPE.log 2>&1 &
done
wants ablations && nice -n 10 "${ACC[@]}" --trainers "${ABLATIONS[@]/#/nnUNetTrainerLightMedSeg_}" --folds 0 --jobs-per-gpu 5 \
    --name acdc_ablation_tmp --out $W/tmp > $W/ablation.log 2>&1 &
wait
echo "trained $(date -u +%T)"
# the tables that compare runs of several invocations (all trained by now: these only evaluate)
wants ablations && "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg "${ABLATIONS[@]/#/nnUNetTrainerLightMedSeg_}" --folds 0 \
    --name acdc_ablation > $W/ablation_eval.log 2>&1
wants fractions && "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 --train-fractions 0.25 0.5 1 \
    --name acdc_data_efficiency > $W/fractions_eval.log 2>&1
echo "evaluated $(date -u +%T)"
touch $W/DONE
