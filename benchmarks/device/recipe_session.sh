#!/usr/bin/env bash
# ACDC at one budget on a single-GPU device machine (started with setsid, raw dataset at /opt/data/Dataset027_ACDC):
# nnU-Net default and LightMedSeg's training recipes trained side by side in one run, each group of trainings one
# accuracy.py invocation with its own augmentation workers, then one table per group and, when the groups trained
# the same folds, the table that compares them (NAME). Results in /opt/out, /opt/acc/DONE when finished.
#   TRAININGS: "TRAINER[,TRAINER...]:FOLDS:DA_WORKERS" entries, FOLDS as 0+1; default: nnU-Net default on folds 0 and 1
#   with 6 augmentation workers each, LightMedSeg (nnU-Net's CPU augmentation) with 4, LightMedSeg_gpuDA with 2
#   (it augments on the GPU: its workers only load and crop).
#   STABILITY: dtypes of the stability runs (stability.sh) to run beside the trainings, e.g. "bf16 fp16"; none by default
set -u
source benchmarks/device/env.sh
OUT=/opt/out W=/opt/acc RAW=/opt/data/Dataset027_ACDC
EPOCHS=${EPOCHS:-20} ITERS=${ITERS:-250} NAME=${NAME:-acdc_20epochs}
TRAININGS=(${TRAININGS:-nnUNetTrainer:0+1:6 nnUNetTrainerLightMedSeg:0+1:4 nnUNetTrainerLightMedSeg_gpuDA:0+1:2})
mkdir -p $OUT $W
rm -f $W/DONE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt
# what bounds the trainings: the card's utilisation and the load average, every 15 s until the end
(echo "time load_1min gpu_util_% gpu_mem_MiB"
 while [ ! -e $W/DONE ]; do
     echo "$(date -u +%T) $(cut -d' ' -f1 /proc/loadavg)" \
          "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits | tr -d ,)"
     sleep 15
 done) > $OUT/utilization.txt 2>&1 &
ACC=(python3 benchmarks/accuracy.py --raw $RAW --work $W --epochs $EPOCHS --iterations $ITERS --gpus 1
     --processes $(nproc) --out $OUT)
# a failed planning ends the session at once (DONE), so that wait.sh returns instead of waiting out its call
if ! "${ACC[@]}" --trainers nnUNetTrainerLightMedSeg --name plan --plan-only > $W/plan.log 2>&1; then
    echo "planning failed $(date -u +%T):"; tail -n 3 $W/plan.log
    touch $W/DONE
    exit 1
fi
echo "planned $(date -u +%T)"
# the stability runs train as nnUNetv2_train does (compiled), with their own 2 augmentation workers each
# (wait for these and the trainings by their ids: a plain wait would also wait for the sampler, which ends at DONE)
PIDS=()
source benchmarks/device/stability.sh
nnUNet_n_proc_DA=2 start_stability ${STABILITY:-}
export nnUNet_compile=f nnUNet_def_n_proc=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
ALL_TRAINERS=() ALL_FOLDS=()
for i in "${!TRAININGS[@]}"; do
    IFS=: read -r trainers folds workers <<< "${TRAININGS[$i]}"
    trainers=(${trainers//,/ }) folds=(${folds//+/ })
    ALL_TRAINERS+=("${trainers[@]}") ALL_FOLDS+=("${folds[*]}")
    nnUNet_n_proc_DA=$workers "${ACC[@]}" --trainers "${trainers[@]}" --folds "${folds[@]}" \
        --jobs-per-gpu $(( ${#trainers[@]} * ${#folds[@]} )) --name ${NAME}_group$i > $W/group$i.log 2>&1 &
    PIDS+=($!)
    sleep 5  # each invocation rewrites splits_final.json (same content): not at the same moment
done
wait "${PIDS[@]}"
echo "trained $(date -u +%T)"
if [ $(printf '%s\n' "${ALL_FOLDS[@]}" | sort -u | wc -l) = 1 ]; then
    "${ACC[@]}" --trainers "${ALL_TRAINERS[@]}" --folds ${ALL_FOLDS[0]} --name $NAME > $W/eval.log 2>&1
fi
echo "evaluated $(date -u +%T)"
touch $W/DONE
