"""The fused Triton backend on a CUDA GPU: realistic lengths, low precision, padding, dropout, cost.

Error budget: for each of out, dq, dk, dv the Triton result's max error against the fp32 reference
(run on the same, already rounded, inputs) must be at most twice the error of PyTorch's own
low-precision computation (the ``pairs`` backend, SDPA, in the same dtype) plus a small absolute eps.

Run: ``pytest -m gpu tests/attention/test_triton_gpu.py``; ``python tests/attention/test_triton_gpu.py``
prints a small benchmark (triton vs pairs vs reference, forward and forward+backward).
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 is set: the GPU tests need compiled kernels", allow_module_level=True)
pytest.importorskip("triton")

from gsit.attention import graph_attention  # noqa: E402
from gsit.attention.reference import attention_weights  # noqa: E402
from gsit.attention.triton.function import dropout_keep_mask, fused_graph_attention  # noqa: E402
from gsit.graph import GraphMask, ModalGraph, SequenceLayout  # noqa: E402

DEV = "cuda"
MODS = ("text", "vision", "audio")
LENGTHS = {"mosi": (46, 496, 371), "awkward": (113, 203, 1023), "long": (70, 1100, 1030)}  # long: tall tiles
EPS = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 5e-4}


def _valid_lengths(lengths, b, seed):
    """Per-sample valid lengths: sample 0 full, sample 1 with an empty modality, the rest random."""
    g = torch.Generator().manual_seed(seed)
    vl = torch.stack([torch.randint(0, n + 1, (b,), generator=g) for n in lengths], dim=1)
    vl[0] = torch.tensor(lengths)
    vl[1, 1] = 0
    return vl.to(DEV)


def _inputs(b, h, n, d, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    q, k, v, do = (torch.randn(b, h, n, d, device=DEV, generator=g) for _ in range(4))
    return q.to(dtype), k.to(dtype), v.to(dtype), do.to(dtype)


def _run(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return [out.float(), *(g.float() for g in grads)]


def _errors(q, k, v, do, mask):
    ref = _run(
        lambda q, k, v: graph_attention(q, k, v, mask, backend="reference"),
        q.float(),
        k.float(),
        v.float(),
        do.float(),
    )
    tri = _run(lambda q, k, v: graph_attention(q, k, v, mask, backend="triton"), q, k, v, do)
    pai = _run(lambda q, k, v: graph_attention(q, k, v, mask, backend="pairs"), q, k, v, do)
    return ref, tri, pai


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("graph", ["forward", "bidirectional"])
def test_error_within_twice_pytorch_low_precision(dtype, lengths, d, padded, graph):
    lens = LENGTHS[lengths]
    b, h = 4, 4
    mask = GraphMask(
        ModalGraph.named(graph, MODS),
        SequenceLayout(MODS, lens),
        _valid_lengths(lens, b, seed=d) if padded else None,
    )
    q, k, v, do = _inputs(b, h, sum(lens), d, dtype, seed=d + len(graph) + len(lengths))
    ref, tri, pai = _errors(q, k, v, do, mask)
    report = []
    for name, r, t, p in zip(("out", "dq", "dk", "dv"), ref, tri, pai):
        assert torch.isfinite(t).all(), f"{name} has non-finite values"
        err_t = (t - r).abs().max().item()
        err_p = (p - r).abs().max().item()
        budget = 2 * err_p + EPS[dtype] * max(1.0, r.abs().max().item())
        report.append(f"{name}: triton {err_t:.3e} pairs {err_p:.3e} budget {budget:.3e}")
        assert err_t <= budget, "; ".join(report)
    if padded:  # padded positions: exact zeros in the output and every gradient
        pad = ~mask.position_valid(DEV)[:, None, :, None]
        for name, t in zip(("out", "dq", "dk", "dv"), tri):
            assert (t.masked_select(pad) == 0).all(), name


def test_backward_is_deterministic():
    lens = LENGTHS["awkward"]
    mask = GraphMask(
        ModalGraph.named("bidirectional", MODS), SequenceLayout(MODS, lens), _valid_lengths(lens, 4, 1)
    )
    q, k, v, do = _inputs(4, 4, sum(lens), 64, torch.bfloat16, seed=1)
    fn = lambda q, k, v: graph_attention(q, k, v, mask, backend="triton")  # noqa: E731
    a, b = _run(fn, q, k, v, do), _run(fn, q, k, v, do)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _low_precision_dropout_attention(q, k, v, mask, scale, keep, p):
    """PyTorch eager attention entirely in q's dtype (as flash-attention's own tests build their
    low-precision baseline), with a given dropout keep mask."""
    allowed = mask.dense_mask(q.device)[:, None]  # (B, 1, N, N)
    has_key = allowed.any(-1, keepdim=True)
    s = (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(s.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return torch.matmul(probs * keep / (1 - p), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dropout_matches_reference_with_the_kernel_mask(dtype):
    """Dropout: same error budget as above, the baseline being PyTorch eager in the same dtype with the
    kernel's own keep mask (materialised by ``dropout_keep_mask``).

    No query row here reads a single real key: for such a row eager autograd gives that key an exactly
    zero dK, whereas any flash-attention-2 style backward (this kernel, PyTorch's flash/efficient SDPA)
    computes ``delta = rowsum(dO * O)`` from the output rounded to bf16, and with dropout ``O = v / (1-p)``
    is not exactly representable, so dK of that key collects ~one bf16 rounding per reading row."""
    lens, p, seed = (46, 96, 71), 0.2, 77
    vl = torch.tensor([[46, 96, 71], [20, 0, 35]], device=DEV)
    mask = GraphMask(ModalGraph.named("bidirectional", MODS), SequenceLayout(MODS, lens), vl)
    n, d = sum(lens), 64
    q, k, v, do = _inputs(2, 4, n, d, dtype, seed=2)
    keep = dropout_keep_mask(8, n, p, seed, DEV).view(2, 4, n, n)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01

    def ref(q, k, v):
        return torch.matmul(attention_weights(q, k, mask, scale=d**-0.5) * keep / (1 - p), v.float())

    r = _run(ref, q.float(), k.float(), v.float(), do.float())
    t = _run(lambda q, k, v: fused_graph_attention(q, k, v, mask, dropout_p=p, seed=seed), q, k, v, do)
    low = _run(lambda q, k, v: _low_precision_dropout_attention(q, k, v, mask, d**-0.5, keep, p), q, k, v, do)
    report = []
    for name, x, y, z in zip(("out", "dq", "dk", "dv"), t, r, low):
        err_t, err_p = (x - y).abs().max().item(), (z - y).abs().max().item()
        budget = 2 * err_p + EPS[dtype] * max(1.0, y.abs().max().item())
        report.append(f"{name}: triton {err_t:.3e} torch {err_p:.3e} budget {budget:.3e}")
        assert err_t <= budget, "; ".join(report)


def _time_ms(fn, reps=20):
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=reps)


def test_padding_cost_follows_real_tokens():
    """~90 % padding must cost a fraction of the dense run, forward and backward.  MOSI's proportions
    scaled 4x (so that the dense run is far above launch overhead); ~11 % real tokens per segment."""
    lens, b, h, d = (184, 1984, 1484), 32, 8, 64
    dense = GraphMask(ModalGraph.named("forward", MODS), SequenceLayout(MODS, lens))
    vl = torch.tensor([[20, 220, 165]] * b, device=DEV)
    padded = GraphMask(dense.graph, dense.layout, vl)
    q, k, v, do = _inputs(b, h, sum(lens), d, torch.bfloat16, seed=4)
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step(mask):
        return lambda: torch.autograd.grad(graph_attention(q, k, v, mask, backend="triton"), (q, k, v), do)

    t_dense, t_padded = _time_ms(step(dense)), _time_ms(step(padded))
    assert t_padded < 0.5 * t_dense, f"padded {t_padded:.3f} ms vs dense {t_dense:.3f} ms"


def _benchmark():  # pragma: no cover - manual
    import itertools

    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{'case':44s} {'backend':9s} {'fwd ms':>8s} {'fwd+bwd ms':>11s}")
    for (lname, lens), d, padded, graph in itertools.product(
        LENGTHS.items(), (32, 64), (False, True), ("forward", "bidirectional")
    ):
        b, h = 32, 8
        vl = torch.tensor([[20, 50, 37] if lname == "mosi" else [100, 150, 600]] * b, device=DEV)
        mask = GraphMask(ModalGraph.named(graph, MODS), SequenceLayout(MODS, lens), vl if padded else None)
        q, k, v, do = _inputs(b, h, sum(lens), d, torch.bfloat16, seed=0)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for backend in ("triton", "pairs", "flex", "reference"):
            try:

                def fwd(q=q, k=k, v=v, mask=mask, backend=backend):
                    with torch.no_grad():
                        graph_attention(q, k, v, mask, backend=backend)

                def fb(q=q, k=k, v=v, mask=mask, backend=backend, do=do):
                    torch.autograd.grad(graph_attention(q, k, v, mask, backend=backend), (q, k, v), do)

                tf, tb = _time_ms(fwd), _time_ms(fb)
            except Exception as exc:  # e.g. flex missing
                name = f"{lname}-d{d}-{'pad' if padded else 'dense'}-{graph}"
                print(f"{name:44s} {backend:9s} n/a ({type(exc).__name__})")
                continue
            print(
                f"{lname + '-d' + str(d) + '-' + ('pad' if padded else 'dense') + '-' + graph:44s} "
                f"{backend:9s} {tf:8.3f} {tb:11.3f}",
                flush=True,
            )


if __name__ == "__main__":  # pragma: no cover
    _benchmark()


def test_inductor_compiled_fusion_matches_eager_and_trains_with_dropout():
    """torch.compile (Inductor, fullgraph) of a GsiT fusion block on the triton backend: eval values and
    input gradients match eager; in training mode (attention dropout in the kernel) a compiled step runs,
    gives finite gradients and a fresh dropout mask per step."""
    from gsit.models.gsit import GraphFusion

    torch.manual_seed(0)
    fusion = GraphFusion(
        modalities=MODS,
        d_model=64,
        num_heads=2,
        num_layers=2,
        attention_backend="triton",
        embed_dropout=0.0,
        attn_dropout=0.2,
    ).to(DEV, torch.bfloat16)
    layout = SequenceLayout(MODS, (46, 200, 150))
    x = torch.randn(4, 396, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(4, 3 * 128, device=DEV, dtype=torch.bfloat16)
    compiled = torch.compile(fusion, fullgraph=True)
    fusion.eval()
    want = fusion(x, layout)
    (want_dx,) = torch.autograd.grad(want, x, g)
    got = compiled(x, layout)
    (got_dx,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(got_dx.float(), want_dx.float(), atol=3e-2, rtol=3e-2)
    fusion.train()
    a = compiled(x, layout)
    (da,) = torch.autograd.grad(a, x, g)
    b = compiled(x, layout)
    assert torch.isfinite(da).all() and not torch.equal(a, b)
    torch._dynamo.reset()
