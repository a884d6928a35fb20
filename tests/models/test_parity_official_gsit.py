"""gsit's GsiT against a port of the official forward (``tests/reference/official_gsit.py``: drewjin/GsiT
76332ba, ``models/custom/GSIT/`` -- GSIT.py, CMG.py, GraphFormer.py, GraphMultiheadAttention.py; the files and
lines ported are listed there).  Weights are copied from gsit's model into the port, both run in float64 and
eval mode at MOSI's widths on unequal, zero-padded block lengths.

* ``attention_semantics = "official_code"`` equals the official HEAD (the xFormers path: q pre-scaled by
  1/sqrt(hd) and scaled again by xFormers, no attention dropout);
* ``attention_semantics = "paper"`` equals the official per-block "naive" path (1/sqrt(hd), attention
  dropout), the paper's semantics;
* negative control: crossing the two (a changed scale) must fail the comparison;
* parameter counts agree per component (convs, fusion, head).
"""

from __future__ import annotations

import pytest
import torch

from gsit.models.gsit import GsiT, GsiTConfig
from tests.reference.official_gsit import OfficialGsiT, build_adj_masked_matrix

TOL = 1e-6
DIMS = {"text": 768, "vision": 20, "audio": 5}  # MOSI: BERT states, Facet, COVAREP
LENGTHS = {"text": 17, "vision": 23, "audio": 19}
PATH = {"official_code": "xformers", "paper": "naive"}


def gsit_model(semantics: str, backend: str) -> GsiT:
    cfg = GsiTConfig(input_dims=dict(DIMS), attention_semantics=semantics, attention_backend=backend)
    torch.manual_seed(0)
    model = GsiT(cfg)
    with torch.no_grad():  # LayerNorms and biases off their trivial initial values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.double().eval()


def official_key(name: str) -> str:
    """The official state_dict name of one of gsit's GsiT parameters."""
    convs = {"text": "proj_l", "audio": "proj_a", "vision": "proj_v"}
    if name.startswith("front_end.convs."):
        m = name.split(".")[2]
        return f"{convs[m]}.weight"
    if name.startswith("head_hidden."):
        return name.replace("head_hidden", "post_fusion_layer_1")
    if name.startswith("head_out."):
        return name.replace("head_out", "post_fusion_layer_2")
    encoders = {
        "forward_encoder": "cross_encoder_forward",
        "backward_encoder": "cross_encoder_backward",
        "self_encoder": "self_encoder",
    }
    parts = name.split(".")  # fusion.<encoder>.(final_norm.x | layers.0.<sub>...)
    enc = f"cross_modal_graph.{encoders[parts[1]]}"
    if parts[2] == "final_norm":
        return f"{enc}.layer_norm.{parts[3]}"
    sub = parts[4:]
    renames = {"attn_norm": "layer_norms.0", "ffn_norm": "layer_norms.1", "attn": "self_attn"}
    return ".".join([enc, "layers", parts[3], renames.get(sub[0], sub[0]), *sub[1:]])


def official_model(ours: GsiT, path: str) -> OfficialGsiT:
    c = ours.config
    ref = (
        OfficialGsiT(
            text_in=DIMS["text"],
            audio_in=DIMS["audio"],
            video_in=DIMS["vision"],
            d=c.d_model,
            heads=c.num_heads,
            nlevels=c.num_layers,
            kernels=(c.kernel_sizes["text"], c.kernel_sizes["audio"], c.kernel_sizes["vision"]),
            path=path,
        )
        .double()
        .eval()
    )
    theirs = dict(ref.named_parameters())  # tied layers are listed once, under layers.0
    mine = dict(ours.named_parameters())
    assert len(theirs) == len(mine)
    with torch.no_grad():
        for name, p in mine.items():
            target = theirs[official_key(name)]
            assert target.shape == p.shape, name
            target.copy_(p)
    return ref


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = {m: torch.randn(3, LENGTHS[m], DIMS[m], generator=g, dtype=torch.float64) for m in DIMS}
    for m in DIMS:  # zero padding at the end, as in the MMSA pickles
        x[m][0, LENGTHS[m] - 6 :] = 0.0
    return x


def predictions(ours: GsiT, ref: OfficialGsiT):
    x = inputs()
    with torch.no_grad():
        return ours(x)["prediction"], ref(x["text"], x["audio"], x["vision"])


@pytest.mark.parametrize("backend", ["reference", "pairs"])
@pytest.mark.parametrize("semantics", ["official_code", "paper"])
def test_gsit_equals_official_forward(semantics, backend):
    ours = gsit_model(semantics, backend)
    a, b = predictions(ours, official_model(ours, PATH[semantics]))
    assert a.shape == b.shape == (3, 1)
    assert (a - b).abs().max().item() < TOL, (a, b)


@pytest.mark.parametrize("semantics, wrong_path", [("official_code", "naive"), ("paper", "xformers")])
def test_gsit_official_parity_negative_control(semantics, wrong_path):
    """The comparison can fail: the other path's attention scale (1/hd vs 1/sqrt(hd)) changes predictions."""
    ours = gsit_model(semantics, "pairs")
    a, b = predictions(ours, official_model(ours, wrong_path))
    assert (a - b).abs().max().item() > 1e-4


def test_gsit_parameter_counts_equal_official_per_component():
    ours = gsit_model("paper", "pairs")
    ref = official_model(ours, "naive")
    groups = {k: sum(p.numel() for p in v) for k, v in ours.parameter_groups().items()}
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    assert groups["front_end"] == count(ref.proj_l, ref.proj_a, ref.proj_v) == 507_520
    assert groups["fusion"] == count(ref.cross_modal_graph) == 1_187_328
    assert groups["head"] == count(ref.post_fusion_layer_1, ref.post_fusion_layer_2) == 98_561


def test_official_dense_mask_is_the_original_interlaced_structure():
    """The port's dense mask (CMG.py build_adj_masked_matrix) allows exactly gsit's graph edges."""
    from gsit.graph import GraphMask, ModalGraph, SequenceLayout

    layout = SequenceLayout(("text", "vision", "audio"), (3, 4, 2))
    fwd, bwd = ModalGraph.structure("original", layout.modalities)
    graphs = {
        ("cross", "forward"): fwd,
        ("cross", "backward"): bwd,
        ("self", "forward"): ModalGraph.named("self", layout.modalities),
    }
    for (mode, direction), graph in graphs.items():
        dense = build_adj_masked_matrix([3, 4, 2], mode=mode, direction=direction) == 0
        assert torch.equal(dense, GraphMask(graph, layout).dense_mask()), (mode, direction)
