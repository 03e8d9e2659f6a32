"""How LightMedSeg runs fast: execution choices switched in beside the architecture (CPU kernel choices, CUDA-graph
replay in inference and training, GPU augmentation).

``nnunetv2_lightmedseg.architectures`` says what the network is, in plain PyTorch modules. The choices here change
how it runs, never what it computes: they keep its parameters and state_dict exactly and its outputs up to float
rounding, and each one is switched into a built network in place, so a checkpoint of either form loads strictly
into the other::

    network = accelerate(LightMedSeg.from_preset("paper", in_channels=1, num_classes=4))

nnU-Net's LightMedSeg trainers return the network that way (``LIGHTMEDSEG_CUDA_GRAPHS=0`` leaves the replay out).
"""
from __future__ import annotations

from nnunetv2_lightmedseg.architectures import LightMedSeg

from .cpu_kernels import (
    FAST_CPU_CLASSES,
    FastCPUConv3d,
    FastCPUConvTranspose3d,
    FastCPUInstanceNorm3d,
    takes_cpu_path,
    use_fast_cpu_kernels,
)
from .graph_replay import CUDAGraphLightMedSeg, InferenceGraphs, TrainingGraphs, replay_cuda_graphs

__all__ = [
    "CUDAGraphLightMedSeg", "FAST_CPU_CLASSES", "FastCPUConv3d", "FastCPUConvTranspose3d", "FastCPUInstanceNorm3d",
    "InferenceGraphs", "TrainingGraphs", "accelerate", "replay_cuda_graphs", "takes_cpu_path", "use_fast_cpu_kernels",
]


def accelerate(network: LightMedSeg, cuda_graphs: bool = True, training_graphs: bool = False) -> LightMedSeg:
    """Switch every execution choice into a built LightMedSeg, in place, and return it: the fast float32 CPU
    kernels (:func:`use_fast_cpu_kernels`) and, with ``cuda_graphs``, the CUDA-graph replay of GPU inference
    (:func:`replay_cuda_graphs`, which makes it a :class:`CUDAGraphLightMedSeg`), with ``training_graphs`` of the
    training forward and backward too."""
    use_fast_cpu_kernels(network)
    return replay_cuda_graphs(network, training=training_graphs) if cuda_graphs else network
