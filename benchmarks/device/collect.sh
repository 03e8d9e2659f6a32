#!/usr/bin/env bash
# Copy what acdc_session.sh has produced so far into $OUT (at most 8 files come back from a call): run at the end
# of every call, since a machine given back takes its files with it. Prints the progress lines first.
set -u
W=/opt/acc
tail -n 2 $W/main.log $W/ablation.log $W/fractions.log $W/stability_*.log $W/group*.log 2>/dev/null | cut -c1-400
tar czf $OUT/out.tgz -C /opt out 2>/dev/null
tar czf $OUT/logs.tgz -C $W --exclude='*.pth' --exclude='*.nii.gz' --exclude='*.npz' --exclude='*.pkl' \
    --exclude='preprocessed/*/nnUNetPlans_*' --exclude='preprocessed/*/gt_segmentations' . 2>/dev/null
# the trained LightMedSeg (fold 0) for the README's figures, and every validation prediction for re-scoring
MODEL=${MODEL:-results_*/Dataset027_ACDC/nnUNetTrainerLightMedSeg__nnUNetPlans__3d_fullres}
(cd $W && tar czf $OUT/lightmedseg_fold0.tgz $MODEL/plans.json $MODEL/dataset.json $MODEL/fold_0/checkpoint_final.pth) \
    2>/dev/null
(cd $W && tar czf $OUT/validation.tgz results_*/*/*/fold_*/validation) 2>/dev/null
ls -la $OUT
