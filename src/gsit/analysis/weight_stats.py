"""Weight and attention-probability statistics of GsiT and MulT (paper Table 5 / Figure 7).

What it computes, for one model:

* :class:`Moments` -- streamed mean / variance / skewness / kurtosis (float64 central moments merged chunk
  by chunk, so no value list is ever held).  Definitions, equal to ``scipy.stats`` defaults: variance =
  m2 (population, ddof 0, ``np.var``), skewness = m3 / m2^1.5 (``scipy.stats.skew(bias=True)``), kurtosis
  = m4 / m2^2 - 3 (Fisher / excess, ``scipy.stats.kurtosis(fisher=True, bias=True)``): a normal
  distribution scores 0, a uniform one -1.2.
* :func:`parameter_scopes` -- every named parameter mapped to exactly one scope (an unmapped or doubly
  mapped name is an error).  Paper scopes: ``cross_forward`` / ``cross_backward`` / ``self``.  GsiT:
  ``fusion.forward_encoder`` / ``fusion.backward_encoder`` / ``fusion.self_encoder``.  MulT: the cross
  encoders ``"q->k"`` (queries of q read keys of k) whose edge is in GsiT's forward cycle (text->vision,
  vision->audio, audio->text) are ``cross_forward``, the other three ``cross_backward``; the three mem
  encoders are ``self``.  Outside the paper's scopes: ``front_end`` (convs), ``head``, ``text_encoder``.
* :func:`weight_stats` -- per scope, the statistics of the pooled values of the selected tensors:
  ``"matrices"`` (default: tensors with >= 2 dims -- attention in/out projections, FFN weights, convs;
  no biases, no LayerNorm) or ``"all"``.  Row ``overall`` is the arithmetic mean of the three scope rows:
  the paper's GsiT "overall" row equals that mean of its scope rows in all four statistics, so we take it as
  the paper's convention; ``fusion_pooled`` is the statistics of the three scopes' values pooled.
* :func:`attention_stats` -- forward hooks (outside the model, removed afterwards) recompute every attention
  call's probabilities from the call's own inputs (GsiT: :func:`gsit.attention.reference.attention_weights`
  with the module's scale; MulT: the same softmax its SDPA call runs), check that they reproduce the call's
  output, and stream their statistics per encoder over the *allowed* entries (the model's own mask: graph
  blocks; padding too when ``padding_aware``; MulT's causal mask) and over the *valid* ones (allowed, and
  query and key both real tokens, not padding).  Every head and every depth call counts.

What it does not do: pick run directories, write files or draw plots (see
:mod:`gsit.analysis.weight_stats_report`), or support Vanilla (it has none of the paper's scopes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gsit.attention.reference import attention_weights
from gsit.errors import GsitError
from gsit.graph import ModalGraph
from gsit.models.gsit import GraphSelfAttention, GsiT
from gsit.models.mult import MulT, MulTAttention

STATS = ("mean", "variance", "skewness", "kurtosis")
FUSION_SCOPES = ("cross_forward", "cross_backward", "self")
OTHER_PARTS = ("front_end", "head", "text_encoder")
TENSOR_CHOICES = ("matrices", "all")
# paper Table 5 (rebuttal "Parameter Statistics"), MOSI: mean / variance / skewness / kurtosis (SPEC)
PAPER_TABLE5 = {
    "gsit": {
        "overall": (-0.0001, 0.0027, 0.0016, -0.7616),
        "cross_backward": (0.0001, 0.0034, 0.0003, -0.8886),
        "cross_forward": (-0.0003, 0.0033, 0.0058, -0.8954),
        "self": (0.0, 0.0013, -0.0013, -0.5008),
    },
    "mult": {
        "overall": (0.0, 0.0032, 0.0004, -0.8505),
        "cross_backward": (-0.0001, 0.0038, -0.0014, -0.8745),
        "cross_forward": (0.0, 0.0038, 0.0015, -0.8591),
        "self": (0.0, 0.002, 0.001, -0.8208),
    },
}
LOG10_RANGE = (-8.0, 0.0)  # attention histograms: log10(probability) in this range (clamped)


# --------------------------------------------------------------------------- streamed moments
@dataclass
class Moments:
    """Count, mean and the sums of 2nd-4th powers of deviations from the mean (float64), merged with the
    pairwise update of Pébay (2008), so values can arrive in chunks of any size."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    def add(self, values: torch.Tensor | np.ndarray) -> Moments:
        x = torch.as_tensor(values).detach().reshape(-1).to(torch.float64)
        if x.numel() == 0:
            return self
        mean = x.mean()
        d = x - mean
        d2 = d * d
        chunk = Moments(
            int(x.numel()), float(mean), float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum())
        )
        return self.merge(chunk)

    def merge(self, other: Moments) -> Moments:
        """Fold ``other`` into ``self`` (in place); returns ``self``."""
        na, nb = self.n, other.n
        if nb == 0:
            return self
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = other.n, other.mean, other.m2, other.m3, other.m4
            return self
        n = na + nb
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (
            self.m3
            + other.m3
            + delta**3 * na * nb * (na - nb) / n**2
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n
        )
        m4 = (
            self.m4
            + other.m4
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6.0 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
            + 4.0 * delta * (na * other.m3 - nb * self.m3) / n
        )
        self.n, self.mean, self.m2, self.m3, self.m4 = n, self.mean + delta * nb / n, m2, m3, m4
        return self

    def stats(self) -> dict[str, float]:
        """``{"n", "mean", "variance", "skewness", "kurtosis"}`` (NaN where undefined: no values, or
        zero variance for the shape statistics)."""
        nan = float("nan")
        if self.n == 0:
            return {"n": 0, "mean": nan, "variance": nan, "skewness": nan, "kurtosis": nan}
        var = self.m2 / self.n
        flat = var <= (1e-15 * self.mean) ** 2  # scipy's test for a constant sample
        return {
            "n": self.n,
            "mean": self.mean,
            "variance": var,
            "skewness": nan if flat else math.sqrt(self.n) * self.m3 / self.m2**1.5,
            "kurtosis": nan if flat else self.n * self.m4 / self.m2**2 - 3.0,
        }


def describe(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """:class:`Moments` statistics of one array (all of its elements)."""
    return Moments().add(values).stats()


def mean_of_rows(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Arithmetic mean of each statistic over ``rows`` (``n`` is their sum): the paper's "overall"."""
    rows = list(rows)
    out: dict[str, float] = {"n": int(sum(r["n"] for r in rows))}
    for s in STATS:
        out[s] = float(np.mean([r[s] for r in rows]))
    return out


# --------------------------------------------------------------------------- scopes
def model_kind(model) -> str:
    if isinstance(model, GsiT):
        return "gsit"
    if isinstance(model, MulT):
        return "mult"
    raise GsitError(
        f"weight statistics need a GsiT or MulT model (the paper's scopes: cross forward, cross backward, "
        f"self); got {type(model).__name__}"
    )


def forward_edges() -> frozenset[tuple[str, str]]:
    """GsiT's forward cycle as (query, key) edges (the paper's original structure, graph.py)."""
    return ModalGraph.structure("original", ("text", "vision", "audio"))[0].edges


def scope_rules(model) -> list[tuple[str, str]]:
    """(parameter-name prefix, scope) for every part of ``model``."""
    common = [("front_end.", "front_end"), ("text_encoder.", "text_encoder")]
    if model_kind(model) == "gsit":
        return common + [
            ("fusion.forward_encoder.", "cross_forward"),
            ("fusion.backward_encoder.", "cross_backward"),
            ("fusion.self_encoder.", "self"),
            ("head_hidden.", "head"),
            ("head_out.", "head"),
        ]
    fwd = forward_edges()
    rules = [
        (f"cross.{q}->{k}.", "cross_forward" if (q, k) in fwd else "cross_backward") for q, k in model.pairs
    ]
    rules += [(f"mem.{m}.", "self") for m in model.modalities]
    return common + rules + [("proj1.", "head"), ("proj2.", "head"), ("out_layer.", "head")]


def parameter_scopes(model, rules: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """Every named parameter of ``model`` -> its scope; a name matched by no rule or by more than one is
    a :class:`GsitError` (the table must name every parameter exactly once)."""
    rules = scope_rules(model) if rules is None else rules
    out = {}
    for name, _ in model.named_parameters():
        hits = [scope for prefix, scope in rules if name.startswith(prefix)]
        if len(hits) != 1:
            raise GsitError(
                f"parameter {name!r} of {type(model).__name__} matches {len(hits)} scope rules {hits}; "
                f"every parameter must map to exactly one scope (gsit/analysis/weight_stats.py)"
            )
        out[name] = hits[0]
    return out


def selected(param: torch.Tensor, tensors: str) -> bool:
    if tensors not in TENSOR_CHOICES:
        raise GsitError(f"--tensors {tensors!r}: expected one of {list(TENSOR_CHOICES)}")
    return tensors == "all" or param.dim() >= 2


@torch.no_grad()
def weight_stats(model, tensors: str = "matrices", *, keep_values: bool = False) -> dict:
    """``{"rows": {scope: stats}, "tensors": {scope: [names]}, "values": {scope: float32 array}}``;
    rows: the three paper scopes, ``overall`` (their mean), ``fusion_pooled`` and the other parts present.
    ``values`` (the pooled fusion-scope values, for histograms) only with ``keep_values``."""
    scopes = parameter_scopes(model)
    params = dict(model.named_parameters())
    moments = {s: Moments() for s in FUSION_SCOPES + OTHER_PARTS}
    names: dict[str, list[str]] = {s: [] for s in moments}
    values: dict[str, list[np.ndarray]] = {s: [] for s in FUSION_SCOPES}
    for name, scope in scopes.items():
        p = params[name]
        if not selected(p, tensors):
            continue
        moments[scope].add(p)
        names[scope].append(name)
        if keep_values and scope in values:
            values[scope].append(p.detach().float().cpu().reshape(-1).numpy())
    rows = {s: moments[s].stats() for s in FUSION_SCOPES}
    rows["overall"] = mean_of_rows(rows[s] for s in FUSION_SCOPES)
    pooled = Moments()
    for s in FUSION_SCOPES:
        pooled.merge(moments[s])
    rows["fusion_pooled"] = pooled.stats()
    for s in OTHER_PARTS:
        if moments[s].n:
            rows[s] = moments[s].stats()
    out = {"rows": rows, "tensors": {s: v for s, v in names.items() if v}}
    if keep_values:
        out["values"] = {s: np.concatenate(v) if v else np.zeros(0, np.float32) for s, v in values.items()}
    return out


# --------------------------------------------------------------------------- attention probabilities
class _Accumulator:
    """Moments + a histogram of log10(p) for the allowed and the valid entries of one encoder."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.moments = {"allowed": Moments(), "valid": Moments()}
        self.hist = {k: np.zeros(bins, np.int64) for k in self.moments}
        self.calls = 0

    def add(self, population: str, p: torch.Tensor) -> None:
        self.moments[population].add(p)
        logp = torch.log10(p.double().clamp(min=10 ** LOG10_RANGE[0]))
        counts = torch.histc(logp, bins=self.bins, min=LOG10_RANGE[0], max=LOG10_RANGE[1])
        self.hist[population] += counts.cpu().numpy().astype(np.int64)


def _check_output(probs, v, out_proj, B, Tq, D, expected, where: str) -> None:
    """The recomputed probabilities must reproduce the attention call's own output."""
    ours = out_proj(torch.matmul(probs, v.float()).transpose(1, 2).reshape(B, Tq, D).to(expected.dtype))
    err = float((ours - expected).abs().max())
    tol = 1e-4 * max(1.0, float(expected.abs().max()))
    if not err <= tol:
        raise GsitError(f"{where}: recomputed attention probabilities miss the call's output by {err:.3g}")


def _valid_positions(model, lengths, layout_modalities, layout_lengths) -> torch.Tensor | None:
    """(B, N) bool: position is a real token (not padding) in GsiT's concatenated sequence."""
    if lengths is None:
        return None
    out_len = model.front_end.output_lengths(lengths)
    pos = [
        torch.arange(n)[None, :] < out_len[m].cpu()[:, None]
        for m, n in zip(layout_modalities, layout_lengths)
    ]
    return torch.cat(pos, dim=1)


@torch.no_grad()
def attention_stats(model, inputs, lengths=None, *, bins: int = 80) -> dict:
    """Run ``model`` once in eval mode on one batch; returns ``{"encoders": {name: {"scope", "calls",
    "allowed": stats, "valid": stats, "hist": {"allowed": counts, "valid": counts}}}, "scopes": {scope:
    {"allowed": stats, "valid": stats, "hist": ...}}, "log10_range": (lo, hi)}``.  GsiT's encoders are its
    three scopes; MulT's are ``cross_forward[text->vision]``-style names pooled into the scopes."""
    kind = model_kind(model)
    acc: dict[str, _Accumulator] = {}
    scope_of: dict[str, str] = {}
    handles = []
    out_len = model.front_end.output_lengths(lengths) if lengths is not None else None

    def gsit_hook(name):
        def hook(mod: GraphSelfAttention, args, out):
            x, mask = args[0], args[1]
            B, N, D = x.shape
            qkv = F.linear(x, mod.in_proj_weight, mod.in_proj_bias)  # (B, N, 3D)
            qkv = qkv.view(B, N, 3, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
            probs = attention_weights(qkv[0], qkv[1], mask, scale=mod.scale)  # (B, H, N, N)
            _check_output(probs, qkv[2], mod.out_proj, B, N, D, out, f"{name} encoder")
            allowed = mask.dense_mask(x.device)
            allowed = allowed.expand(B, N, N) if allowed.dim() == 2 else allowed  # (B, N, N)
            valid = _valid_positions(model, lengths, mask.layout.modalities, mask.layout.lengths)
            _record(name, probs, allowed, None if valid is None else valid.to(x.device), None)

        return hook

    def mult_hook(name, q_mod, k_mod):
        def hook(mod: MulTAttention, args, out):
            query, key, value, allowed = args
            B, Tq, D = query.shape
            q, k, v = mod.project(query, key, value)  # (B, H, T, hd)
            logits = (
                torch.matmul(q.float(), k.float().transpose(-1, -2)) * mod.head_dim**-0.5
            )  # (B, H, Tq, Tk)
            Tk = logits.shape[-1]
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            _check_output(probs, v, mod.out_proj, B, Tq, D, out, f"{name} encoder")
            allow = allowed if allowed is not None else torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
            vq = vk = None
            if out_len is not None:
                vq = torch.arange(Tq, device=q.device)[None, :] < out_len[q_mod].to(q.device)[:, None]
                vk = torch.arange(Tk, device=q.device)[None, :] < out_len[k_mod].to(q.device)[:, None]
            _record(name, probs, allow.expand(B, Tq, Tk), vq, vk)

        return hook

    def _record(name, probs, allowed, valid_q, valid_k):
        a = acc.setdefault(name, _Accumulator(bins))
        a.calls += 1
        for b in range(probs.shape[0]):  # one sample at a time: (H, Tq, Tk) boolean selections
            sel = allowed[b]
            a.add("allowed", probs[b][:, sel])
            if valid_q is not None:
                vk = valid_k[b] if valid_k is not None else valid_q[b]
                a.add("valid", probs[b][:, sel & valid_q[b][:, None] & vk[None, :]])

    if kind == "gsit":
        f = model.fusion
        encoders = {
            "cross_forward": f.forward_encoder,
            "cross_backward": f.backward_encoder,
            "self": f.self_encoder,
        }
        for name, enc in encoders.items():
            scope_of[name] = name
            for mod in enc.modules():
                if isinstance(mod, GraphSelfAttention):
                    handles.append(mod.register_forward_hook(gsit_hook(name)))
    else:
        fwd = forward_edges()
        parts = [(model.cross[f"{q}->{k}"], q, k) for q, k in model.pairs]
        parts += [(model.mem[m], m, m) for m in model.modalities]
        for enc, q, k in parts:
            scope = "self" if q == k else ("cross_forward" if (q, k) in fwd else "cross_backward")
            name = f"{scope}[{q}]" if q == k else f"{scope}[{q}->{k}]"
            scope_of[name] = scope
            for mod in enc.modules():
                if isinstance(mod, MulTAttention):
                    handles.append(mod.register_forward_hook(mult_hook(name, q, k)))
    was_training = model.training
    try:
        model.eval()
        model(inputs, lengths)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    encoders_out, scopes_out = {}, {}
    for name, a in acc.items():
        encoders_out[name] = {
            "scope": scope_of[name],
            "calls": a.calls,
            **{pop: m.stats() for pop, m in a.moments.items()},
            "hist": {pop: h.tolist() for pop, h in a.hist.items()},
        }
    for scope in FUSION_SCOPES:
        members = [acc[n] for n in acc if scope_of[n] == scope]
        if not members:
            raise GsitError(f"no attention call of scope {scope!r} ran")
        row = {}
        for pop in ("allowed", "valid"):
            m = Moments()
            for a in members:
                m.merge(a.moments[pop])
            row[pop] = m.stats()
        row["hist"] = {
            pop: np.sum([a.hist[pop] for a in members], axis=0).tolist() for pop in ("allowed", "valid")
        }
        scopes_out[scope] = row
    return {"encoders": encoders_out, "scopes": scopes_out, "log10_range": list(LOG10_RANGE), "bins": bins}
