#!/usr/bin/env bash
# ACDC on one GPU as run on the device machine (started with setsid after speed_session.sh, raw dataset at
# /opt/data/Dataset027_ACDC): plan and preprocess, then at once the accuracy table (fold 0), the data-efficiency
# runs, the ablation runs and the bf16 / fp16 stability runs; last the tables that combine several invocations.
# Results in /opt/out. One epoch budget for every run: EPOCHS x ITERS training iterations.
set -u
source benchmarks/device/env.sh
OUT=/opt/out W=/opt/acc RAW=/opt/data/Dataset027_ACDC
EPOCHS=${EPOCHS:-10} ITERS=${ITERS:-100}
mkdir -p $OUT $W/tmp
ACC=(python3 benchmarks/accuracy.py --raw $RAW --work $W --epochs $EPOCHS --iterations $ITERS --gpus 1
     --processes 16 --out $OUT)
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg --name plan --plan-only > $W/plan.log 2>&1
echo "planned $(date -u +%T)"
# many jobs at once, each with two augmentation workers: the 16 CPUs, not the GPU, bound this machine
export nnUNet_n_proc_DA=2 nnUNet_compile=f nnUNet_def_n_proc=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
ABLATIONS=(noAnchors mlpAnchors noLSPM noFiLM noTextureRouting noSkipRouter noPositionBias noAdaptiveDecoder noGhost)
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 --train-fractions 0.25 0.5 --jobs-per-gpu 2 --out $W/tmp \
    --name acdc_data_efficiency_tmp > $W/fractions.log 2>&1 &
sleep 20  # the data-efficiency run appends its folds to splits_final.json first
"${ACC[@]}" --trainers "${ABLATIONS[@]/#/nnUNetTrainerLightMedSeg_}" --folds 0 --jobs-per-gpu 2 --name acdc_ablation_tmp --out $W/tmp \
    > $W/ablation.log 2>&1 &
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer nnUNetTrainerUNETR --folds 0 --jobs-per-gpu 3 \
    --name acdc_fold0 > $W/main.log 2>&1 &
for DTYPE in bf16 fp16; do
    nnUNet_raw=/opt/data nnUNet_preprocessed=$W/preprocessed nnUNet_results=$W/stability_results nnUNet_n_proc_DA=2 \
    python3 benchmarks/stability.py -d 27 -tr nnUNetTrainerLightMedSeg --iterations 2000 --dtypes $DTYPE \
        --out $OUT/stability_$DTYPE.json > $W/stability_$DTYPE.log 2>&1 &
done
wait
echo "trained $(date -u +%T)"
# the tables that compare runs of several invocations (all trained by now: these only evaluate)
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg "${ABLATIONS[@]/#/nnUNetTrainerLightMedSeg_}" --folds 0 \
    --name acdc_ablation > $W/ablation_eval.log 2>&1
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 --train-fractions 0.25 0.5 1 \
    --name acdc_data_efficiency > $W/fractions_eval.log 2>&1
echo "evaluated $(date -u +%T)"
