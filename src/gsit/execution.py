"""How the training and evaluation steps run: eager, compiled, or captured whole in CUDA graphs.

``train.execution`` picks one of

* ``eager``: plain PyTorch, one Python dispatch per kernel (the reference; every CPU run);
* ``compiled``: ``torch.compile(model, dynamic=False)`` (Inductor fuses LayerNorm/GELU/residual kernels);
* ``graphed``: the whole training step -- forward (text encoder included), loss, backward and the
  accumulation of the gradients -- captured once per input shape in a CUDA graph and replayed;
* ``compiled_graphed``: the compiled model inside that captured step (the fastest on a GPU);
* ``auto`` (default): on one CUDA device ``compiled_graphed`` for GsiT/Vanilla and ``graphed`` for
  MulT (:data:`AUTO_FAST`); ``eager`` on a CPU and under DDP.

What is run is recorded in the run's ``config.json`` (``execution``: requested, chosen, why).

**Under DDP** (``torchrun``) the non-eager modes run the plain model (no DDP wrapper, whose per-backward
hooks a captured step would bypass): rank 0's weights are broadcast once, every rank accumulates its
share of each batch (loss scaled by its share, as in the eager DDP loop), and the window's summed
gradients are averaged with one all-reduce just before the optimizer step -- the same arithmetic as DDP
averaging every batch, with 1/``accumulation_steps`` of the collectives.  Value clipping would need the
averaged gradient after every batch, so ``train.grad_clip > 0`` is refused there.

**Static shapes, bounded.**  Every mode but ``eager`` sees only a small, fixed set of input shapes, so it
compiles and captures a bounded number of times and never afterwards:

* the batch dimension is always ``batch_size`` (evaluation: the evaluation batch size): a short last batch
  is padded with copies of its first row that carry weight 0.  The loss is the weighted mean
  ``sum(w_i * l_i) / sum(w_i)``, which equals the mean over the real rows, so padded rows contribute
  nothing to the loss, the gradient or the predictions (samples never interact inside the model); the
  optional contrastive term (``train.contrastive_weight``) masks them out of its anchors and negatives;
* in padding-aware mode (``model.padding_aware``) the audio/vision (and precomputed text) inputs are cut,
  on the CPU, to the smallest of ``len(LENGTH_LEVELS)`` levels (a fraction of the padded length, the same
  fraction for every modality) that holds the batch's longest valid input: padding cannot change a valid
  output there, so results are unchanged and the cost follows the real tokens.

So a run sees at most ``len(LENGTH_LEVELS)`` training shapes (1 without padding-aware mode) and as many
evaluation shapes.  Valid-length maxima come from the CPU batch: no host synchronisation inside a step.

**Gradient accumulation** is the paper's (SPEC §9): the captured step adds its gradients into the
parameters' ``.grad`` tensors (owned outside the graph, zeroed at the start of every window); the
optimizer steps after the window's last batch; the partial window is never stepped.  Under
``compiled_graphed``/``graphed`` the step uses ``torch.autograd.grad`` + ``_foreach_add_`` instead of
``backward()`` so that the accumulation happens inside the graph, in place, and the optimizer update
itself is a captured graph too (Adam in its ``capturable`` form, :class:`CapturedOptimizerStep`).

**Unused parameters.**  The static steps give every trainable parameter a ``.grad`` (zeros where no
forward uses it, e.g. a BERT pooler), where the eager loop leaves ``None`` and Adam skips it; with Adam's
coupled weight decay such a parameter then decays.  Predictions never read it, so results are unchanged,
but its checkpointed value differs from an eager run's.

**Exactness.**  With dropout off, fp32 losses and metrics equal the eager path up to float summation order
(GPU test ``tests/train/test_execution_gpu.py``).  With dropout on, the masks are drawn from the same
generator but in a different order (per captured graph), so runs agree in distribution, not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gsit.capture import (
    Captured,
    CapturedOptimizerStep,
    copy_batch,
    dynamo_graph_count,
    keep_text_encoder_eager,
    raise_recompile_limit,
)
from gsit.data.batch import cut_to_level, padded_rows
from gsit.distributed import all_reduce_mean_
from gsit.errors import ConfigError
from gsit.evaluate import amp_context, training_loss
from gsit.models.gsit import static_shapes

EXECUTIONS = ("auto", "eager", "compiled", "graphed", "compiled_graphed")
WARMUP_STEPS = 2
# eager runs of a step on a side stream before its capture (lazy initialisation)
# what ``auto`` picks per model on one GPU: modes checked against eager there
# (tests/train/test_execution_gpu.py) and timed (benchmarks/bench_train.py).  MulT is captured but not
# compiled: compiling its nine unshared transformers took > 150 s of warm-up, while the captured eager
# step alone is 2.2x (MOSI) / 5.4x (MOSEI-shaped) faster than eager with a 1.6 s warm-up; mult_dagger
# is the same module class.  Models not listed stay eager under ``auto``.
AUTO_FAST = {
    "gsit": "compiled_graphed",
    "vanilla": "compiled_graphed",
    "mult": "graphed",
    "mult_dagger": "graphed",
}


@dataclass(frozen=True)
class Execution:
    """What ``train.execution`` resolved to on this device, and why."""

    requested: str
    mode: str  # eager | compiled | graphed | compiled_graphed
    reason: str

    @property
    def static(self) -> bool:
        return self.mode != "eager"

    @property
    def compiled(self) -> bool:
        return self.mode in ("compiled", "compiled_graphed")

    @property
    def graphed(self) -> bool:
        return self.mode in ("graphed", "compiled_graphed")

    def to_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "chosen": self.mode, "reason": self.reason}


def resolve_execution(
    requested: str,
    *,
    device: torch.device,
    world: int = 1,
    legacy_compile: bool = False,
    model_name: str = "gsit",
    grad_clip: float = 0.0,
) -> Execution:
    """The execution mode for ``requested`` on ``device`` (``world`` processes); an impossible explicit
    request is an error, never a silent substitute."""
    chosen = _choose(
        requested, device=device, world=world, legacy_compile=legacy_compile, model_name=model_name
    )
    if world > 1 and chosen.static and grad_clip > 0:
        how = "train.compile=true (--compile)" if legacy_compile else f"train.execution={requested!r}"
        raise ConfigError(
            f"train.grad_clip={grad_clip} with {how} under DDP ({world} processes): clipping needs the "
            "rank-averaged gradient after every batch, which the fast path's one all-reduce per "
            "accumulation window does not give; use train.execution='eager' (without --compile) or no "
            "clipping"
        )
    return chosen


def _choose(
    requested: str, *, device: torch.device, world: int, legacy_compile: bool, model_name: str
) -> Execution:
    if requested not in EXECUTIONS:
        raise ConfigError(f"train.execution={requested!r}; allowed: {list(EXECUTIONS)}")
    cuda = device.type == "cuda"
    if requested == "auto":
        if legacy_compile:
            return Execution(requested, "compiled", "train.compile=true (--compile) asks for torch.compile")
        if not cuda:
            return Execution(
                requested,
                "eager",
                f"device {device.type}: CUDA graphs need a GPU, and compiling "
                "for the CPU costs more than it saves on these model sizes",
            )
        if world > 1:
            return Execution(
                requested,
                "eager",
                f"DDP over {world} processes: the fast path under DDP (train.execution=compiled, "
                "graphed or compiled_graphed: one gradient all-reduce per accumulation window) is "
                "tested on CPU processes only, not yet on 2 GPUs, so auto keeps DDP eager",
            )
        mode = AUTO_FAST.get(model_name)
        if mode is None:
            return Execution(
                requested,
                "eager",
                f"model {model_name!r}: its compiled/captured step has not "
                "been verified on a GPU yet (set train.execution=graphed or compiled to try it)",
            )
        if mode == "graphed":
            return Execution(
                requested,
                "graphed",
                f"one CUDA device, model {model_name!r}: whole step captured in CUDA graphs, not "
                "compiled (compiling it costs minutes of warm-up for little gain)",
            )
        return Execution(
            requested,
            "compiled_graphed",
            "one CUDA device: compiled model, whole step "
            "captured in CUDA graphs (the fastest exact execution)",
        )
    if requested in ("graphed", "compiled_graphed"):
        if not cuda:
            raise ConfigError(
                f"train.execution={requested!r} needs a CUDA device (device is {device}); "
                f"use 'eager' or 'compiled'"
            )
    return Execution(requested, requested, "as requested")


# ----------------------------------------------------------------------------- one step


def modality_dropout_(inputs: dict[str, torch.Tensor], p: float) -> None:
    """Training-time: zero each non-text modality of a sample with probability ``p`` (in place)."""
    if p <= 0:
        return
    for m in ("audio", "vision"):
        if m in inputs:
            x = inputs[m]
            keep = (torch.rand(x.shape[0], device=x.device) >= p).to(x.dtype)
            inputs[m] = x * keep[:, None, None]


class StepRunner:
    """Runs training and prediction steps in one execution mode (``eager`` keeps today's eager loop).

    ``train_batch(dataset, rows, scale)`` adds the gradient of ``scale`` x the batch's mean loss into the
    parameters' ``.grad`` and returns the (unscaled) mean loss as a device scalar; ``predict(dataset, rows)``
    returns the (len(rows), C) predictions on the device.  Shapes are made static as the module doc says."""

    def __init__(
        self,
        model: torch.nn.Module,
        execution: Execution,
        *,
        task: str,
        batch_size: int,
        eval_batch_size: int,
        amp: str,
        modality_dropout: float,
        grad_clip: float,
        padding_aware: bool,
        modalities: tuple[str, ...],
        kernel_sizes: dict[str, int],
        device: torch.device,
        train_module: torch.nn.Module | None = None,
        compile_text_encoder: bool = False,
        world: int = 1,
        contrastive_weight: float = 0.0,
        contrastive_temperature: float = 0.1,
    ) -> None:
        self.model = model
        self.execution = execution
        self.task = task
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.amp = amp
        self.modality_dropout = modality_dropout
        self.grad_clip = grad_clip
        self.padding_aware = padding_aware
        self.modalities = modalities
        self.kernel_sizes = kernel_sizes
        self.device = device
        self.contrastive_weight = contrastive_weight
        self.contrastive_temperature = contrastive_temperature
        self.params = [p for p in model.parameters() if p.requires_grad]
        # under DDP (world > 1) the static steps run the plain model and average the gradients once per
        # accumulation window (optimizer_step); DDP's per-backward hooks would not see a captured step
        self.world = world
        if world > 1 and train_module is not None and train_module is not model:
            raise ValueError("under DDP the static steps take the plain model (no DDP wrapper)")
        self.train_module = train_module if train_module is not None else model  # DDP wrapper, if any
        self.forward = self.train_module  # training forward (through DDP when there is one)
        self.eval_forward = model  # prediction never goes through DDP (ranks hold uneven batch counts)
        if execution.compiled:
            # one compiled graph per (shape, train/eval) and per new model structure (seeds, tuning trials);
            # past Dynamo's limit a frame would silently run eager, so the limit is set well above it
            raise_recompile_limit(64)
            if not compile_text_encoder:
                keep_text_encoder_eager(model)
            self.forward = torch.compile(self.train_module, dynamic=False)
            self.eval_forward = (
                self.forward if self.train_module is model else torch.compile(model, dynamic=False)
            )
        self._train_graphs: dict[tuple, Captured] = {}
        self._eval_graphs: dict[tuple, Captured] = {}
        self.captures = 0
        self._optimizer_step: CapturedOptimizerStep | None = None

    # ----------------------------------------------------------------- helpers
    def _require_static(self) -> None:
        if not self.execution.static:  # eager steps are train.py's and evaluate.py's own loops
            raise RuntimeError("StepRunner runs static-shape steps only; the eager path does not use it")

    def autocast(self):
        return amp_context(self.amp, self.device)

    def _cpu_batch(self, dataset, rows: np.ndarray, size: int | None):
        if size is None:
            return dataset.__getitems__(rows), None
        idx, weights = padded_rows(np.asarray(rows), size)
        batch = dataset.__getitems__(idx)
        if self.padding_aware:
            batch = cut_to_level(batch, modalities=self.modalities, kernel_sizes=self.kernel_sizes)
        return batch, torch.from_numpy(weights)

    # ----------------------------------------------------------------- training
    def train_batch(self, dataset, rows: np.ndarray, scale: float = 1.0) -> torch.Tensor:
        self._require_static()
        if self.world > 1:
            self.ensure_grads()  # every rank all-reduces the same tensors, used or not
        batch, weights = self._cpu_batch(dataset, rows, self.batch_size)
        if not self.execution.graphed:
            batch = batch.to(self.device)
            w = weights.to(self.device)
            loss = self._weighted_loss(batch.inputs, batch.lengths, batch.labels, w)
            (loss * scale).backward()
            self._clip()
            return loss.detach()
        return self._replay(self._train_graphs, batch, weights, self._train_step, training=True, scale=scale)

    def _weighted_loss(self, inputs, lengths, labels, weights) -> torch.Tensor:
        inputs = dict(inputs)
        modality_dropout_(inputs, self.modality_dropout)
        with self.autocast(), static_shapes():
            out = self.forward(inputs, lengths)
        # weighted mean: padded rows (weight 0) add nothing, nor are they contrastive anchors or negatives
        return training_loss(
            out,
            labels,
            self.task,
            weights=weights,
            contrastive_weight=self.contrastive_weight,
            contrastive_temperature=self.contrastive_temperature,
        )

    def _clip(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(self.params, self.grad_clip)

    def _train_step(self, c: Captured) -> torch.Tensor:
        loss = self._weighted_loss(c.inputs, c.lengths, c.labels, c.weights)
        grads = torch.autograd.grad(loss * c.scale, self.params, allow_unused=True)
        pairs = [(p.grad, g) for p, g in zip(self.params, grads) if g is not None]
        torch._foreach_add_([a for a, _ in pairs], [g for _, g in pairs])
        if self.grad_clip > 0:
            acc = [p.grad for p in self.params]
            torch._foreach_clamp_min_(acc, -self.grad_clip)
            torch._foreach_clamp_max_(acc, self.grad_clip)
        return loss.detach()

    def ensure_grads(self) -> None:
        """Allocate every parameter's ``.grad`` (zeros) before the first capture: the captured step adds
        into these tensors, and they must never be replaced (``zero_grad(set_to_none=False)``)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(self, dataset, rows: np.ndarray) -> torch.Tensor:
        n = len(rows)
        self._require_static()
        batch, weights = self._cpu_batch(dataset, rows, self.eval_batch_size)
        if not self.execution.graphed:
            batch = batch.to(self.device)
            with self.autocast(), static_shapes():
                return self.eval_forward(batch.inputs, batch.lengths)["prediction"].float()[:n]
        return self._replay(self._eval_graphs, batch, weights, self._eval_step, training=False)[:n]

    def _eval_step(self, c: Captured) -> torch.Tensor:
        with torch.no_grad(), self.autocast(), static_shapes():
            return self.eval_forward(c.inputs, c.lengths)["prediction"].float()

    # ----------------------------------------------------------------- CUDA graphs
    def _replay(
        self, graphs: dict, batch, weights: torch.Tensor, step, *, training: bool, scale: float = 1.0
    ) -> torch.Tensor:
        key = (training, tuple((m, tuple(t.shape), t.dtype) for m, t in sorted(batch.inputs.items())))
        c = graphs.get(key)
        if c is None:
            c = graphs[key] = self._capture(batch, weights, step, training=training, scale=scale)
        else:
            copy_batch(c, batch, weights, scale)
        c.graph.replay()
        return c.output

    def _capture(self, batch, weights: torch.Tensor, step, *, training: bool, scale: float = 1.0) -> Captured:
        """Warm the step up on a side stream, then capture it.  Neither the gradients, the weights nor the
        random streams see the warm-up or the capture: the accumulated gradients and the RNG states are
        restored afterwards, so capturing mid-window changes nothing."""
        dev = self.device
        c = Captured(
            None,
            {m: t.to(dev) for m, t in batch.inputs.items()},
            {m: t.to(dev) for m, t in batch.lengths.items()},
            batch.labels.to(dev),
            weights.to(dev),
            torch.empty(0),
            torch.full((), float(scale), device=dev) if training else None,
        )
        if training:
            self.ensure_grads()
        saved = [p.grad.clone() for p in self.params] if training else []
        cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(c)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            c.output = step(c)
        c.graph = graph
        torch.cuda.synchronize(dev)
        if training:
            for p, s in zip(self.params, saved):
                p.grad.copy_(s)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, dev)
        self.captures += 1
        return c

    def graph_count(self) -> int:
        """Compiled graphs (Dynamo, whole process) plus captured CUDA graphs so far: constant once every
        shape of the run has been seen (no recompiles, no recaptures)."""
        optimizer_graphs = len(self._optimizer_step.graphs) if self._optimizer_step is not None else 0
        return (dynamo_graph_count() if self.execution.compiled else 0) + self.captures + optimizer_graphs

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The window's optimizer update: captured in a CUDA graph under ``graphed``/``compiled_graphed``
        (:class:`CapturedOptimizerStep`), else ``optimizer.step()``."""
        if self.world > 1:  # DDP without DDP's hooks: the window's summed gradients, averaged once
            all_reduce_mean_([p.grad for p in self.params], self.world)
        if not self.execution.graphed:
            optimizer.step()
            return
        if self._optimizer_step is None or self._optimizer_step.optimizer is not optimizer:
            self._optimizer_step = CapturedOptimizerStep(optimizer, self.device)
        self._optimizer_step.step()
