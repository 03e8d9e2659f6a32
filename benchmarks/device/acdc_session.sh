#!/usr/bin/env bash
# ACDC on a device machine of one or more GPUs (started with setsid, raw dataset at /opt/data/Dataset027_ACDC):
# plan and preprocess, then at once the accuracy table (LightMedSeg, nnU-Net default and UNETR on FOLDS), the bf16 /
# fp16 stability runs, the data-efficiency runs and the ablation runs (these two at lower CPU priority); last the
# tables that combine several invocations. Jobs are spread over every GPU. Results in /opt/out, /opt/acc/DONE when
# finished. One epoch budget for every run: EPOCHS x ITERS iterations.
set -u
source benchmarks/device/env.sh
OUT=/opt/out W=/opt/acc RAW=/opt/data/Dataset027_ACDC
EPOCHS=${EPOCHS:-10} ITERS=${ITERS:-100} FOLDS=(${FOLDS:-0 1 2 3 4}) NAME=${NAME:-acdc}
# which runs: a subset of "main stability fractions ablations" (a machine lasts 30 minutes, a call 10)
RUNS=" ${RUNS:-main stability fractions ablations} "
wants() { [[ $RUNS == *" $1 "* ]]; }
DA_WORKERS=${DA_WORKERS:-2}
GPUS=$(nvidia-smi -L | wc -l)
per_gpu() { echo $(( ($1 + GPUS - 1) / GPUS )); }  # jobs at once on each GPU so that N jobs all start at once
mkdir -p $OUT $W/tmp
rm -f $W/DONE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt
ACC=(python3 benchmarks/accuracy.py --raw $RAW --work $W --epochs $EPOCHS --iterations $ITERS --gpus $GPUS
     --processes $(nproc) --out $OUT)
"${ACC[@]}" --trainers nnUNetTrainerLightMedSeg --name plan --plan-only > $W/plan.log 2>&1
echo "planned $(date -u +%T)"
# many jobs at once, each with few augmentation workers: the CPUs, not the GPUs, bound these machines
export nnUNet_n_proc_DA=$DA_WORKERS nnUNet_compile=f nnUNet_def_n_proc=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MAIN=(nnUNetTrainerLightMedSeg nnUNetTrainer nnUNetTrainerUNETR)
ABLATIONS=(noAnchors mlpAnchors noLSPM noFiLM noTextureRouting noSkipRouter noPositionBias noAdaptiveDecoder noGhost)
ABLATIONS=("${ABLATIONS[@]/#/nnUNetTrainerLightMedSeg_}")
# fold 0 at 100 % (LightMedSeg, nnU-Net default) is trained once, by the first of main / fractions / ablations wanted
# (two invocations training one fold at once would write the same folder)
FULL=(1) REFERENCE=(nnUNetTrainerLightMedSeg)
wants main && FULL=()
{ wants main || wants fractions; } && REFERENCE=()
wants fractions && nice -n 10 "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 \
    --train-fractions 0.25 0.5 "${FULL[@]}" --jobs-per-gpu $(per_gpu $((4 + 2 * ${#FULL[@]}))) --out $W/tmp \
    --name acdc_data_efficiency_tmp > $W/fractions.log 2>&1 &
# the data-efficiency run appends its folds to splits_final.json; the others rewrite that file, so they wait
for _ in $(seq 60); do
    wants fractions || break
    python3 -c "import json, sys; sys.exit(len(json.load(open('$W/preprocessed/${RAW##*/}/splits_final.json'))) <= 5)" \
        2>/dev/null && break
    sleep 2
done
wants main && "${ACC[@]}" --trainers "${MAIN[@]}" --folds "${FOLDS[@]}" --jobs-per-gpu $(per_gpu $((3 * ${#FOLDS[@]}))) \
    --name $NAME > $W/main.log 2>&1 &
source benchmarks/device/stability.sh
wants stability && start_stability bf16 fp16
wants ablations && nice -n 10 "${ACC[@]}" --trainers "${REFERENCE[@]}" "${ABLATIONS[@]}" --folds 0 \
    --jobs-per-gpu $(per_gpu $((9 + ${#REFERENCE[@]}))) --name acdc_ablation_tmp --out $W/tmp > $W/ablation.log 2>&1 &
wait
echo "trained $(date -u +%T)"
# the tables that compare runs of several invocations (all trained by now: these only evaluate)
wants ablations && "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg "${ABLATIONS[@]}" --folds 0 \
    --name acdc_ablation > $W/ablation_eval.log 2>&1
wants fractions && "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 --train-fractions 0.25 0.5 1 \
    --name acdc_data_efficiency > $W/fractions_eval.log 2>&1
echo "evaluated $(date -u +%T)"
touch $W/DONE
