"""CUDA-graph and compiler helpers of the fast path (:mod:`gsit.execution`): the captured step's buffers,
copying a CPU batch into them, the captured optimizer update, keeping a text encoder out of
``torch.compile``, and Dynamo's graph counter.  Nothing here decides *what* runs; that is
:func:`gsit.execution.resolve_execution` and :class:`gsit.execution.StepRunner`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gsit.errors import ConfigError


@dataclass
class Captured:
    graph: Any
    inputs: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    labels: torch.Tensor
    weights: torch.Tensor
    output: torch.Tensor
    scale: torch.Tensor | None = None  # training: the loss scale (a DDP rank's share), a device scalar


class CapturedOptimizerStep:
    """``optimizer.step()`` captured in a CUDA graph and replayed once per accumulation window.

    The optimizer is switched to its ``capturable`` form (step counters on the device, bias corrections
    computed there), the same update as the eager step up to float round-off.  Its first step runs
    eagerly: that creates the optimizer state (moments, counters) outside any graph, so a replay never
    re-initialises it.  The learning rates and other hyper-parameters are constants of a captured graph,
    so a graph is kept per distinct setting (a plateau scheduler's reductions add one each; bounded by the
    number of reductions)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        if not all("capturable" in g for g in optimizer.param_groups):
            raise ConfigError(f"{type(optimizer).__name__} has no capturable form; it cannot be captured")
        self.optimizer = optimizer
        self.device = device
        self.graphs: dict[tuple, Any] = {}
        for g in optimizer.param_groups:
            g["capturable"] = True
        for state in optimizer.state.values():  # a resumed optimizer: counters to the device
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device != device:
                state["step"] = step.to(device=device, dtype=torch.float32)

    def _key(self) -> tuple:
        return tuple(
            tuple(
                (k, float(v) if isinstance(v, (int, float)) else repr(v))
                for k, v in sorted(g.items())
                if k != "params"
            )
            for g in self.optimizer.param_groups
        )

    def _initialised(self) -> bool:
        return all(
            "step" in self.optimizer.state.get(p, {})
            for g in self.optimizer.param_groups
            for p in g["params"]
            if p.grad is not None
        )

    def step(self) -> None:
        if not self._initialised():
            self.optimizer.step()  # creates the state eagerly (on the device: capturable)
            return
        key = self._key()
        graph = self.graphs.get(key)
        if graph is None:
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # recorded, not run
                self.optimizer.step()
            self.graphs[key] = graph
        graph.replay()


def copy_batch(c: Captured, batch, weights: torch.Tensor, scale: float = 1.0) -> None:
    """Copy a CPU batch into a captured graph's input buffers without stalling the host: the sources go
    through pinned (page-locked) memory, so each copy is queued behind the previous replay instead of
    waiting for it (a copy from pageable memory synchronises the stream first)."""
    pin = c.weights.is_cuda
    for m, t in batch.inputs.items():
        c.inputs[m].copy_(t.pin_memory() if pin else t, non_blocking=True)
    for m, t in batch.lengths.items():
        c.lengths[m].copy_(t.pin_memory() if pin else t, non_blocking=True)
    c.labels.copy_(batch.labels.pin_memory() if pin else batch.labels, non_blocking=True)
    c.weights.copy_(weights.pin_memory() if pin else weights, non_blocking=True)
    if c.scale is not None:
        c.scale.fill_(scale)


def keep_text_encoder_eager(model: torch.nn.Module) -> None:
    """Leave ``model.text_encoder`` (a BERT-family module) out of ``torch.compile``: Dynamo calls it as an
    ordinary function, and it still runs inside the captured CUDA graph.  Compiling BERT-base costs about
    as much warm-up as the whole fusion model (``train.compile_text_encoder`` opts in; see the bench)."""
    enc = getattr(model, "text_encoder", None)
    if enc is None or getattr(enc, "_gsit_eager_under_compile", False):
        return
    enc.forward = torch.compiler.disable(enc.forward, recursive=True)  # instance attribute; eager ignores it
    enc._gsit_eager_under_compile = True


def raise_recompile_limit(n: int) -> None:
    """Dynamo keeps a few compiled graphs per code object; a run needs one per (shape, train/eval)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)


def dynamo_graph_count() -> int:
    """How many graphs Dynamo has compiled so far in this process (recompiles included)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))
