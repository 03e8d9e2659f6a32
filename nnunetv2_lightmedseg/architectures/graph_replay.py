"""Replaying a network's inference forward from captured CUDA graphs."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch.utils._pytree import tree_map_only


class InferenceGraphs:
    """CUDA graphs of an inference forward, one per input signature, replayed instead of launching its kernels.

    LightMedSeg's eager forward on a GPU is several hundred small kernels whose launches cost more than their work
    (at 1 x 4 x 128^3 it moved 40 GB/s on a 3 TB/s H100, benchmarks/SPEED_NOTES.md); a graph launches them at once.
    ``run(forward, x, variant)`` captures ``forward(x)`` on the first call for x's shape, dtype and device, the
    autocast state, inference mode and ``variant`` (anything else the output depends on, such as deep supervision),
    and replays it on later calls: x is copied into the graph's input, and the output comes back as a copy, so a
    caller may keep it across calls (nnU-Net's test-time mirroring sums several outputs). At most ``max_graphs``
    signatures are kept, the least recently used dropped first.

    Weights are read from their memory at each replay, so weights loaded in place (``load_state_dict``) are used;
    anything that moves or re-allocates them (``module.to``, ``half``) must call ``clear()``.

    Why not ``torch.compile(mode="reduce-overhead")``: it compiles for tens of seconds in every new process, i.e.
    every ``nnUNetv2_predict``. Why not ``torch.cuda.make_graphed_callables``: it graphs the backward too and needs
    every caller's autocast to run without its weight cache; nnUNetPredictor's autocast keeps it.
    """

    def __init__(self, max_graphs: int = 2) -> None:
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = OrderedDict()

    @staticmethod
    def applies(module: torch.nn.Module, x: torch.Tensor) -> bool:
        """True for a module in eval mode given a CUDA input with autograd off, outside torch.compile, tracing and
        ONNX export."""
        return (not module.training and x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export())

    def run(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor, variant: Hashable = None) -> Any:
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
               torch.is_inference_mode_enabled(), variant)
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            self._graphs[key] = self._capture(forward, x)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(x)
        graph.replay()
        return tree_map_only(torch.Tensor, torch.clone, static_output)

    def _capture(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor
                 ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        # the caller's autocast caches its casts of the weights; captured, those copies would be freed with the
        # caller's autocast context and later replays would read stale memory, so the graph casts them itself
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        static_input = x.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(x.device), autocast:
            # warm-up outside the graph: cuDNN's algorithm search and lazy initialisations must not be captured
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward(static_input)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_output = forward(static_input)
        return graph, static_input, static_output

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def __getstate__(self) -> dict[str, Any]:
        # graphs belong to one process and device: a copy or a pickled module starts without them
        return {"max_graphs": self.max_graphs, "_graphs": OrderedDict()}
