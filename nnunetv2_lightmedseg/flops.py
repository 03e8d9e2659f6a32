"""FLOPs of one forward pass, counted by PyTorch's ``FlopCounterMode``: the one count of the demo and the benchmarks.

It counts convolutions (transposed ones included), matrix products and attention at 2 FLOPs per multiply-add and
ignores element-wise work (norms, activations, softmax, resizing). PyTorch's counter knows the CUDA kernels of
``scaled_dot_product_attention`` but not the CPU one, so the CPU kernel is counted with PyTorch's own SDPA formula
(without it, a transformer's attention would count 0 on the CPU).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

#: How the count is made, for the metadata of results files.
FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode, one forward pass under torch.no_grad (the CPU "
                "scaled_dot_product_attention kernel counted with PyTorch's SDPA formula)")
CONVENTION = "FLOPs = 2 x MACs (multiply-adds of convolutions and matmuls); GMACs = GFLOPs / 2"


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (see the module docstring), without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        model(x)
    return int(counter.get_total_flops())
