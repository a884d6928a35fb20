"""MulT (MMSA's MULT): parameter arithmetic, shapes, masks, positions, gradients, input errors, and the
attention against an einsum rewrite.  Parity with the real code -- whole models per preset, encoders with
and without positions, the trainer loop -- is tested against the ``mmsa`` package in test_parity_mmsa.py."""

from __future__ import annotations

import math

import pytest
import torch

from gsit.errors import ConfigError, DataError
from gsit.models.mult import (
    MulT,
    MulTAttention,
    MulTConfig,
    MulTEncoder,
    future_mask,
    sinusoidal_positions,
    sinusoidal_table,
)

B, LENGTHS = 2, {"text": 12, "audio": 20, "vision": 15}


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """These tensors are tiny: intra-op threads only add spin-wait overhead (severe on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(params) -> int:
    return sum(p.numel() for p in params)


def small_config(**overrides) -> MulTConfig:
    kw = dict(d_model=16, num_heads=4, num_layers=2)
    kw.update(overrides)
    return MulTConfig(**kw)


def random_inputs(config: MulTConfig, *, seed: int = 0, batch: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, LENGTHS[m], config.input_dims[m], generator=g) for m in config.modalities}


def encoder_kwargs(**overrides) -> dict:
    kw = dict(
        d_model=16,
        num_heads=4,
        num_layers=3,
        share_layers=False,
        attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        embed_dropout=0.0,
        causal=False,
        positional=False,
        ffn_activation="relu",
    )
    kw.update(overrides)
    return kw


# --------------------------------------------------------------------------- parameter arithmetic (SPEC §12)
def test_mult_param_count_mmsa_mosi_default():
    model = MulT(MulTConfig())  # d=50, 10 heads, nlevels 4, kernels 5/5/5, dims 768/5/20
    assert n_params(model.parameters()) == 2_571_551


@pytest.mark.parametrize(
    "share, total, fusion", [(True, 5_251_457, 3_561_984), (False, 15_928_193, 14_238_720)]
)
def test_mult_param_count_d128(share, total, fusion):
    model = MulT(MulTConfig(d_model=128, num_heads=4, num_layers=4, share_layers=share))
    groups = model.parameter_groups()
    assert n_params(model.parameters()) == total
    assert n_params(groups["fusion"]) == fusion
    assert n_params(groups["head"]) == 1_181_953
    assert n_params(groups["front_end"]) == 507_520
    assert groups["text_encoder"] == []
    d, L = 128, 4
    per_layer = lambda D: 12 * D * D + 13 * D  # noqa: E731
    depth = 1 if share else L
    assert fusion == 6 * (depth * per_layer(d) + 2 * d) + 3 * (depth * per_layer(2 * d) + 4 * d)


def test_mult_parameter_groups_partition_all_parameters():
    model = MulT(small_config(share_layers=True))
    ids = [id(p) for group in model.parameter_groups().values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_mult_shared_layers_store_one_layer_and_reuse_it():
    model = MulT(small_config(share_layers=True, num_layers=4))
    enc = model.cross["text->audio"]
    assert len(enc.layers) == 1 and len(enc.depth_layers()) == 4
    assert all(layer is enc.layers[0] for layer in enc.depth_layers())
    assert len(model.mem["text"].depth_layers()) == 4
    keys = [k for k in model.state_dict() if k.startswith("cross.text->audio.layers.")]
    assert keys and all(k.startswith("cross.text->audio.layers.0.") for k in keys)


def test_mult_mem_encoders_have_at_least_three_layers():
    model = MulT(small_config(num_layers=1))
    assert len(model.cross["audio->vision"].layers) == 1
    assert len(model.mem["vision"].layers) == 3


def test_mult_attention_dropout_follows_key_modality():
    model = MulT(small_config(attn_dropout=0.1, attn_dropout_a=0.2, attn_dropout_v=0.3))
    expected = {
        "text->audio": 0.2,
        "text->vision": 0.3,
        "audio->text": 0.1,
        "audio->vision": 0.3,
        "vision->text": 0.1,
        "vision->audio": 0.2,
    }
    got = {name: enc.layers[0].attn.attn_dropout for name, enc in model.cross.items()}
    assert got == expected
    assert all(enc.layers[0].attn.attn_dropout == 0.1 for enc in model.mem.values())


# --------------------------------------------------------------------------- shapes and text modes
def test_mult_forward_shapes_precomputed_text():
    config = small_config()
    model = MulT(config).eval()
    out = model(random_inputs(config))
    assert out["prediction"].shape == (B, 1)
    assert out["features"].shape == (B, 6 * config.d_model)


def test_mult_forward_shapes_classification_output():
    config = small_config(output_dim=7)
    out = MulT(config).eval()(random_inputs(config))
    assert out["prediction"].shape == (B, 7)


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    from gsit.models.text import BertTextEncoder

    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    return BertTextEncoder.from_config(cfg)


def text_bert_rows(batch: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 9:] = 0
    ids = ids * mask
    return torch.stack([ids, mask, torch.zeros_like(ids)], dim=1)  # (B, 3, L)


def test_mult_forward_shapes_bert_text():
    config = small_config(input_dims={"text": 32, "audio": 5, "vision": 20})
    model = MulT(config, text_encoder=tiny_bert())
    inputs = random_inputs(config)
    inputs["text"] = text_bert_rows(B, LENGTHS["text"])
    out = model(inputs)
    assert out["prediction"].shape == (B, 1) and out["features"].shape == (B, 6 * config.d_model)
    out["prediction"].sum().backward()
    groups = model.parameter_groups()
    assert n_params(groups["text_encoder"]) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["text_encoder"])


def test_mult_text_encoder_width_mismatch_is_config_error():
    with pytest.raises(ConfigError, match="32"):
        MulT(small_config(), text_encoder=tiny_bert())  # input_dims text 768 vs BERT width 32


# --------------------------------------------------------------------------- the future mask
@pytest.mark.parametrize("q_len, k_len", [(5, 5), (3, 7), (7, 3), (1, 4), (6, 1)])
def test_future_mask_matches_mmsa_triu(q_len, k_len):
    additive = torch.triu(torch.full((q_len, k_len), float("-inf")), 1 + abs(k_len - q_len))
    assert torch.equal(future_mask(q_len, k_len), additive == 0)
    assert future_mask(q_len, k_len)[:, 0].all()  # no empty row


def test_mult_causal_changes_output():
    base = MulT(small_config(causal=False)).eval()
    causal = MulT(small_config(causal=True)).eval()
    causal.load_state_dict(base.state_dict())
    inputs = random_inputs(base.config)
    assert not torch.allclose(base(inputs)["prediction"], causal(inputs)["prediction"])


@pytest.mark.parametrize("positional", [False, True])
def test_cross_encoder_causal_ignores_future_keys(positional):
    torch.manual_seed(0)
    for causal in (True, False):
        enc = MulTEncoder(**encoder_kwargs(causal=causal, positional=positional)).eval()
        x, src = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
        moved = src.clone()
        moved[:, -1] += torch.randn(2, 16)
        first, first_moved = enc(x, src)[:, :-1], enc(x, moved)[:, :-1]
        assert torch.allclose(first, first_moved, atol=1e-6) == causal


def test_self_encoder_causal_ignores_future_queries():
    torch.manual_seed(0)
    enc = MulTEncoder(**encoder_kwargs(causal=True, positional=True)).eval()
    x = torch.randn(2, 8, 16)
    moved = x.clone()
    moved[:, 5:] += torch.randn(2, 3, 16)
    assert torch.allclose(enc(x)[:, :5], enc(moved)[:, :5], atol=1e-6)
    assert not torch.allclose(enc(x)[:, 5:], enc(moved)[:, 5:])


# --------------------------------------------------------------------------- positions
def reference_position_row(p: int, dim: int) -> list[float]:
    if p == 0:
        return [0.0] * dim
    half = dim // 2
    w = [math.exp(-i * math.log(10000.0) / (half - 1)) for i in range(half)]
    row = [math.sin(p * wi) for wi in w] + [math.cos(p * wi) for wi in w]
    return row + [0.0] * (dim % 2)


@pytest.mark.parametrize("dim", [16, 17])
def test_sinusoidal_table_matches_formula(dim):
    table = sinusoidal_table(6, dim)
    expected = torch.tensor([reference_position_row(p, dim) for p in range(6)], dtype=table.dtype)
    assert torch.allclose(table, expected, atol=1e-12)


def test_sinusoidal_positions_skip_tokens_whose_first_feature_is_zero():
    x = torch.randn(2, 5, 16)
    x[1, 3:] = 0.0  # padded frames after a bias-free conv
    x[0, 2, 0] = 0.0  # fairseq's test looks at the first feature only
    pos = sinusoidal_positions(x)
    table = sinusoidal_table(6, 16).float()
    assert torch.allclose(pos[0, [0, 1, 3, 4]], table[[1, 2, 4, 5]])
    assert torch.equal(pos[0, 2], torch.zeros(16)) and torch.equal(pos[1, 3:], torch.zeros(2, 16))


def test_mult_positional_changes_output():
    base = MulT(small_config(positional=True)).eval()
    nopos = MulT(small_config(positional=False)).eval()
    nopos.load_state_dict(base.state_dict())
    inputs = random_inputs(base.config)
    assert not torch.allclose(base(inputs)["prediction"], nopos(inputs)["prediction"])


# --------------------------------------------------------------------------- determinism and gradients
def test_mult_eval_is_deterministic_and_train_is_stochastic():
    config = small_config()
    model = MulT(config)
    inputs = random_inputs(config)
    model.eval()
    assert torch.equal(model(inputs)["prediction"], model(inputs)["prediction"])
    model.train()
    assert not torch.equal(model(inputs)["prediction"], model(inputs)["prediction"])


@pytest.mark.parametrize("share, causal", [(False, False), (True, True)])
def test_mult_gradients_reach_every_parameter(share, causal):
    torch.manual_seed(0)
    config = small_config(share_layers=share, causal=causal)
    model = MulT(config).train()
    model(random_inputs(config))["prediction"].pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda x: x.pop("audio"), r"missing modality 'audio'"),
        (lambda x: x.update(audio=torch.randn(B, 20, 6)), r"'audio'.*6.*\(2, 20, 6\)"),
        (lambda x: x.update(vision=torch.randn(B, 15)), r"'vision'.*\(2, 15\)"),
        (lambda x: x.update(vision=torch.randn(B, 3, 20)), r"'vision'.*shorter than the conv kernel 5"),
        (lambda x: x.update(text=torch.randn(B + 1, 12, 768)), r"batch sizes differ"),
        (lambda x: x["audio"].__setitem__((0, 0, 0), float("nan")), r"'audio'.*NaN"),
    ],
)
def test_mult_bad_input_is_data_error(change, pattern):
    config = small_config()
    inputs = random_inputs(config)
    change(inputs)
    with pytest.raises(DataError, match=pattern):
        MulT(config)(inputs)


def test_mult_features_where_text_bert_rows_are_expected_is_data_error():
    config = small_config(input_dims={"text": 32, "audio": 5, "vision": 20})
    model = MulT(config, text_encoder=tiny_bert())
    with pytest.raises(DataError, match=r"'text'.*\(2, 12, 32\)"):
        model(random_inputs(config))


def test_mult_token_ids_without_text_encoder_is_data_error():
    config = small_config()
    inputs = random_inputs(config)
    inputs["text"] = text_bert_rows(B, LENGTHS["text"])
    with pytest.raises(DataError, match=r"'text'.*\(2, 3, 12\).*text encoder"):
        MulT(config)(inputs)


def test_mult_nan_policy_ignore_passes_nan_through():
    config = small_config(nan_policy="ignore")
    inputs = random_inputs(config)
    inputs["vision"][0, 0, 0] = float("nan")
    out = MulT(config).eval()(inputs)["prediction"]
    assert torch.isnan(out[0]).all()


def test_mult_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="divisible"):
        MulTConfig(d_model=50, num_heads=4)
    with pytest.raises(ConfigError, match="modalities"):
        MulTConfig(modalities=("text", "audio"))
    with pytest.raises(ConfigError, match="ffn_activation"):
        MulTConfig(ffn_activation="tanh")


# --------------------------------------------------------------------------- parity with references
def einsum_attention(attn: MulTAttention, query, key, value, allowed=None):
    """Packed in-projection, per-head softmax(q k^T / sqrt(hd)) v written with einsum, then out_proj."""
    D, H = attn.d_model, attn.num_heads
    W, b = attn.in_proj_weight, attn.in_proj_bias
    q = (query @ W[:D].T + b[:D]).unflatten(-1, (H, D // H))  # (B, Tq, H, hd)
    k = (key @ W[D : 2 * D].T + b[D : 2 * D]).unflatten(-1, (H, D // H))  # (B, Tk, H, hd)
    v = (value @ W[2 * D :].T + b[2 * D :]).unflatten(-1, (H, D // H))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D // H)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.float().softmax(dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).flatten(2)  # (B, Tq, D)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_mult_cross_attention_matches_einsum_reference(causal):
    torch.manual_seed(0)
    model = MulT(small_config(causal=causal)).eval()
    attn = model.cross["vision->audio"].layers[1].attn
    with torch.no_grad():
        attn.in_proj_bias.normal_()
    query, source = torch.randn(2, 11, 16), torch.randn(2, 16, 16)
    allowed = future_mask(11, 16) if causal else None
    got = attn(query, source, source, allowed)
    assert torch.allclose(got, einsum_attention(attn, query, source, source, allowed), atol=1e-5)
