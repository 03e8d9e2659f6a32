"""Replaying LightMedSeg's forward on a GPU from captured CUDA graphs: in inference always, in training on request.

:class:`InferenceGraphs` captures and replays any inference forward; :class:`TrainingGraphs` a training forward and
its backward; :class:`CUDAGraphLightMedSeg` is LightMedSeg with both switched in, and :func:`replay_cuda_graphs`
switches a built network to it in place.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Union

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils._pytree import tree_map_only

from nnunetv2_lightmedseg.architectures import LightMedSeg


def _outside_compilers_and_tracers() -> bool:
    """Not inside torch.compile, tracing, scripting, ONNX export or a dispatch mode (FLOP counting must see the
    operators, which a replay does not dispatch)."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and not is_in_torch_dispatch_mode())


def _signature(x: torch.Tensor) -> tuple:
    """What a captured graph is specific to besides the caller's own variant: x's shape, dtype and device and the
    CUDA autocast state."""
    return tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")


def _uncached_autocast() -> torch.autocast:
    """The caller's CUDA autocast without its weight cache: captured, the cache's casts of the weights would be freed
    with the caller's context and later replays would read stale memory (and make_graphed_callables refuses it), so
    a graph casts the weights itself."""
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                          cache_enabled=False)


class InferenceGraphs:
    """CUDA graphs of an inference forward, one per input signature, replayed instead of launching its kernels.

    LightMedSeg's eager forward on a GPU is several hundred small kernels whose launches cost more than their work
    (benchmarks/SPEED_NOTES.md); a graph launches them at once.
    ``run(forward, x, variant)`` captures ``forward(x)`` on the first call for x's shape, dtype and device, the
    autocast state, inference mode and ``variant`` (anything else the output depends on, such as deep supervision),
    and replays it on later calls: x is copied into the graph's input, and the output comes back as a copy, so a
    caller may keep it across calls (nnU-Net's test-time mirroring sums several outputs). At most ``max_graphs``
    signatures are kept, the least recently used dropped first.

    Weights are read from their memory at each replay, so weights loaded in place (``load_state_dict``) are used;
    anything that moves or re-allocates them (``module.to``, ``half``) must call ``clear()``.

    Why not ``torch.compile(mode="reduce-overhead")``: it compiles again in every new process, i.e. every
    ``nnUNetv2_predict`` (benchmarks/SPEED_NOTES.md). Why not ``torch.cuda.make_graphed_callables``: it graphs the
    backward too and needs every caller's autocast to run without its weight cache; nnUNetPredictor's autocast
    keeps it.
    """

    def __init__(self, max_graphs: int = 2) -> None:
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = OrderedDict()

    @staticmethod
    def applies(module: torch.nn.Module, x: torch.Tensor) -> bool:
        """True for a module in eval mode given a CUDA input with autograd off, outside torch.compile, tracing,
        ONNX export and dispatch modes (FLOP counting must see the operators, which a replay does not dispatch)."""
        return not module.training and x.is_cuda and not torch.is_grad_enabled() and _outside_compilers_and_tracers()

    def run(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor, variant: Hashable = None) -> Any:
        key = (*_signature(x), torch.is_inference_mode_enabled(), variant)
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
        static_input = x.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(x.device), _uncached_autocast():
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


class _EagerForward(nn.Module):
    """The network's own forward as a module of its parameters, for ``make_graphed_callables`` (which replaces the
    forward of the module it is given: this wrapper's, not the network's)."""

    def __init__(self, network: "CUDAGraphLightMedSeg") -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        return self.network.forward_eager(x)


class TrainingGraphs:
    """CUDA graphs of a training forward and of its backward (``torch.cuda.make_graphed_callables``), replayed instead
    of launching their kernels; the loss, the gradient scaling and clipping and the optimiser step stay the caller's.

    nnU-Net trains on patches of one shape and batch, so one signature is captured, on the first training forward
    (three forwards and backwards of warm-up on that batch first, whose gradients are not accumulated); another
    signature (shape, dtype, autocast state, deep supervision) runs eagerly. The gradients reach the parameters
    through autograd as in the eager backward: ``.grad`` is then the graph's gradient buffer, which the next replay
    overwrites, so the caller must consume them before the next forward (nnU-Net's ``train_step`` does: step, then
    ``zero_grad(set_to_none=True)``). Outputs that the loss does not use get zero gradients where the eager backward
    gives None (nnU-Net's coarsest deep-supervision output, weight 0): an optimiser with weight decay then also decays
    the parameters that only such an output uses (its auxiliary head), which no output the loss sees depends on.

    Weights are read from their memory at each replay (``load_state_dict`` in place is seen, as by ``--c``);
    anything that moves them must call ``clear()``.
    """

    def __init__(self) -> None:
        self._key: Optional[Hashable] = None
        self._graphed: Optional[nn.Module] = None

    @staticmethod
    def applies(module: nn.Module, x: torch.Tensor) -> bool:
        """True for a module in training mode given a CUDA input with autograd on, in one process
        (DistributedDataParallel reduces gradients in hooks that the graphed backward would need warmed up with it),
        outside compilers and tracers."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return module.training and x.is_cuda and torch.is_grad_enabled() and not distributed and \
            _outside_compilers_and_tracers()

    def run(self, network: "CUDAGraphLightMedSeg", x: torch.Tensor, variant: Hashable = None) -> Any:
        """``network.forward_eager(x)``, replayed from the graphs when x has the captured signature (captured on the
        first call); the outputs are the graph's buffers, valid until the next call."""
        key = (*_signature(x), variant)
        if self._key is None:
            self._graphed = self._capture(network, x)
            self._key = key
        if key != self._key:
            return network.forward_eager(x)
        return self._graphed(x)

    @staticmethod
    def _capture(network: "CUDAGraphLightMedSeg", x: torch.Tensor) -> nn.Module:
        with torch.cuda.device(x.device), _uncached_autocast():
            # unused parameters (the auxiliary heads without deep supervision) get no gradient, as eagerly
            return torch.cuda.make_graphed_callables(_EagerForward(network), (x.detach(),), allow_unused_input=True)

    def clear(self) -> None:
        self._key, self._graphed = None, None

    def __len__(self) -> int:
        return int(self._graphed is not None)

    def __getstate__(self) -> dict[str, Any]:
        # graphs belong to one process and device: a copy or a pickled module starts without them
        return {"_key": None, "_graphed": None}


class CUDAGraphLightMedSeg(LightMedSeg):
    """LightMedSeg whose forward on a GPU is replayed from CUDA graphs: its inference forward (eval mode, autograd
    off) always, captured once per input shape (:class:`InferenceGraphs`); its training forward and backward when
    ``training_graphs_enabled`` is set (:class:`TrainingGraphs`, off by default: the gradients then live in the graph's
    buffers, which only a training loop that consumes them at each step may accept). Same kernels, same outputs,
    without the launch cost that bounds this network's eager GPU forward.

    The CPU, torch.compile, tracing and ONNX export run LightMedSeg's own forward (``forward_eager``), and so does
    everything after a capture fails (with one warning: ``cuda_graphs`` becomes False). ``train()`` frees the
    inference graphs (their memory pool holds one forward's activations); ``eval()`` and ``.to()`` keep both kinds
    unless the weights move. The graphs are no state: parameters and state_dict are LightMedSeg's, and copies and
    pickles start without graphs.

    Made by :func:`replay_cuda_graphs` from a built network, or directly like LightMedSeg
    (``CUDAGraphLightMedSeg.from_preset(...)``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cuda_graphs = True
        self.training_graphs_enabled = False
        self.inference_graphs = InferenceGraphs()
        self.training_graphs = TrainingGraphs()

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        if self.cuda_graphs and InferenceGraphs.applies(self, x):
            return self._replayed(self.inference_graphs.run, self.forward_eager, x)
        if self.cuda_graphs and self.training_graphs_enabled and TrainingGraphs.applies(self, x):
            return self._replayed(self.training_graphs.run, self, x)
        return self.forward_eager(x)

    def _replayed(self, run: Callable[..., Any], forward: Any, x: torch.Tensor) -> Any:
        self.check_input(x)
        try:
            return run(forward, x, variant=self.deep_supervision)
        except RuntimeError as error:  # a driver or setup that cannot capture must not stop a prediction or training
            self.cuda_graphs = False
            self.inference_graphs.clear()
            self.training_graphs.clear()
            warnings.warn(f"LightMedSeg could not replay its forward from a CUDA graph ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); it runs eagerly from now on, "
                          "slower but with the same results. Set LIGHTMEDSEG_CUDA_GRAPHS=0 to skip the attempt.",
                          RuntimeWarning, stacklevel=3)
        return self.forward_eager(x)

    def forward_eager(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        """LightMedSeg's own forward, never replayed."""
        return super().forward(x)

    def train(self, mode: bool = True) -> "CUDAGraphLightMedSeg":
        if mode:  # a graph's memory pool holds one forward's activations: free it for training
            self.inference_graphs.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # captured graphs read the weights where they were: .to(), .half() and the like may move them (nnU-Net's
        # predictor calls .to(device) on every case, which moves nothing)
        before = [t.data_ptr() for t in self.state_dict().values()]
        result = super()._apply(fn, recurse)
        if [t.data_ptr() for t in self.state_dict().values()] != before:
            self.inference_graphs.clear()
            self.training_graphs.clear()
        return result


def replay_cuda_graphs(network: LightMedSeg, training: bool = False) -> CUDAGraphLightMedSeg:
    """Switch a built LightMedSeg to :class:`CUDAGraphLightMedSeg` in place, and return it; ``training`` also replays
    its training forward and backward (``training_graphs_enabled``).

    Only the class and a few attributes (the replay switches and empty graph caches) change: parameters, state_dict,
    hooks, device and mode stay those of the built network. A network that already replays keeps its graphs.
    """
    if not isinstance(network, CUDAGraphLightMedSeg):
        if type(network) is not LightMedSeg:
            raise TypeError(f"replay_cuda_graphs takes a LightMedSeg, got a {type(network).__name__}")
        network.__class__ = CUDAGraphLightMedSeg
        network.cuda_graphs = True
        network.inference_graphs = InferenceGraphs()
        network.training_graphs = TrainingGraphs()
        network.training_graphs_enabled = False
    network.training_graphs_enabled = network.training_graphs_enabled or training
    return network
