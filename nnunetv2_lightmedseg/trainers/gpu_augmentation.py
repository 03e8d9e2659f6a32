"""Training augmentation on the training device: nnU-Net's pipeline run batched there instead of in CPU workers."""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunetv2_lightmedseg.execution.gpu_augmentation import BatchedTrainingTransforms

AUGMENTATION_DEVICES = ("auto", "cpu", "device")


class DeviceAugmentation:
    """Mixin for nnU-Net trainers, listed before ``nnUNetTrainer`` in the bases: nnU-Net's training augmentation
    (``get_training_transforms``, with the trainer's own arguments) runs on the training device on whole batches
    (``BatchedTrainingTransforms``), and nnU-Net's data loader processes only load, crop and pad.

    ``augmentation_device`` chooses: "auto" augments on the device when it is a CUDA GPU and leaves nnU-Net's CPU
    pipeline otherwise; "cpu" always leaves nnU-Net's pipeline; "device" always augments on the training device,
    the CPU included. Cascaded configurations, and pipelines with a transform that has no batched port, keep
    nnU-Net's pipeline; the training log says once which pipeline runs.

    Nothing of it is saved or restored: ``--c`` and ``--val`` are nnU-Net's, and under DDP each rank augments its own
    batch on its own GPU.
    """

    augmentation_device: ClassVar[str] = "auto"
    #: set by ``get_dataloaders`` when the batched pipeline runs; None while nnU-Net's runs in its workers
    device_augmentation: Optional[BatchedTrainingTransforms] = None

    def _wants_device_augmentation(self) -> bool:
        if self.augmentation_device not in AUGMENTATION_DEVICES:
            raise ValueError(f"{type(self).__name__}.augmentation_device is {self.augmentation_device!r}; use one "
                             f"of {AUGMENTATION_DEVICES}")
        return self.augmentation_device == "device" or (self.augmentation_device == "auto"
                                                        and self.device.type == "cuda")

    def _batched(self, tr_transforms: BasicTransform) -> Optional[BatchedTrainingTransforms]:
        """The batched form of nnU-Net's training pipeline, or None (logged) where it has none."""
        try:
            return BatchedTrainingTransforms(tr_transforms)
        except NotImplementedError as error:
            self.print_to_log_file(f"Training augmentation: nnU-Net's own pipeline in its data loader processes, "
                                   f"since {error}")
            return None

    def get_dataloaders(self):
        self.device_augmentation = None
        if not self._wants_device_augmentation():
            self.print_to_log_file(f"Training augmentation: nnU-Net's own pipeline in its data loader processes "
                                   f"(augmentation_device {self.augmentation_device!r}, device {self.device})")
            return super().get_dataloaders()
        if self.is_cascaded:
            self.print_to_log_file("Training augmentation: nnU-Net's own pipeline in its data loader processes, "
                                   "since the cascade's transforms (previous stage as one-hot input) have no batched "
                                   "port")
            return super().get_dataloaders()

        # nnunetv2 2.8.1's nnUNetTrainer.get_dataloaders with one change, the training loader's transforms=None.
        # nnU-Net builds the pipeline and hands it to the loader, whose worker processes it starts, in this one
        # method, with no hook in between; tests/test_gpu_augmentation.py pins its source so that a change in
        # nnU-Net's is seen here.
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        (
            rotation_for_DA,
            do_dummy_2d_data_aug,
            initial_patch_size,
            mirror_axes,
        ) = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        self.device_augmentation = self._batched(tr_transforms)
        val_transforms = self.get_validation_transforms(deep_supervision_scales,
                                                        is_cascaded=self.is_cascaded,
                                                        foreground_labels=self.label_manager.foreground_labels,
                                                        regions=self.label_manager.foreground_regions if
                                                        self.label_manager.has_regions else None,
                                                        ignore_label=self.label_manager.ignore_label)

        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = nnUNetDataLoader(dataset_tr, self.batch_size,
                                 initial_patch_size,
                                 self.configuration_manager.patch_size,
                                 self.label_manager,
                                 oversample_foreground_percent=self.oversample_foreground_percent,
                                 sampling_probabilities=None, pad_sides=None,
                                 transforms=None if self.device_augmentation is not None else tr_transforms,
                                 probabilistic_oversampling=self.probabilistic_oversampling)
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size,
                                  self.configuration_manager.patch_size,
                                  self.configuration_manager.patch_size,
                                  self.label_manager,
                                  oversample_foreground_percent=self.oversample_foreground_percent,
                                  sampling_probabilities=None, pad_sides=None, transforms=val_transforms,
                                  probabilistic_oversampling=self.probabilistic_oversampling)

        allowed_num_processes = get_allowed_n_proc_DA()
        if allowed_num_processes == 0:
            mt_gen_train = SingleThreadedAugmenter(dl_tr, None)
            mt_gen_val = SingleThreadedAugmenter(dl_val, None)
        else:
            mt_gen_train = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None,
                                                        num_processes=allowed_num_processes,
                                                        num_cached=max(6, allowed_num_processes // 2), seeds=None,
                                                        pin_memory=self.device.type == 'cuda', wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val,
                                                      transform=None, num_processes=max(1, allowed_num_processes // 2),
                                                      num_cached=max(3, allowed_num_processes // 4), seeds=None,
                                                      pin_memory=self.device.type == 'cuda',
                                                      wait_time=0.002)
        if self.device_augmentation is not None:
            loading = f"{allowed_num_processes} worker processes" if allowed_num_processes else "the training process"
            self.print_to_log_file(f"Training augmentation: nnU-Net's pipeline run batched on {self.device} "
                                   f"(nnunetv2_lightmedseg.execution.gpu_augmentation); the data loader "
                                   f"({loading}) only loads and crops")
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    def train_step(self, batch: dict) -> dict:
        if self.device_augmentation is not None:
            with torch.no_grad():
                data, target = self.device_augmentation.augment(batch["data"].to(self.device, non_blocking=True),
                                                                batch["target"].to(self.device, non_blocking=True))
            batch = {**batch, "data": data, "target": target}
        return super().train_step(batch)
