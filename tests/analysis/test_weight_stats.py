"""gsit weight-stats (issue 16, paper Table 5 / Figure 7): moments against scipy.stats, the scope table
(every parameter exactly once, checked against SPEC §12's parameter arithmetic), the attention hooks, and
the command end to end on two tiny trained runs (GsiT and MulT-dagger)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

scipy_stats = pytest.importorskip("scipy.stats")

import gsit  # noqa: E402
from gsit import cli  # noqa: E402
from gsit.analysis import weight_stats as ws  # noqa: E402
from gsit.analysis.weight_stats import (  # noqa: E402
    FUSION_SCOPES,
    PAPER_TABLE5,
    STATS,
    Moments,
    attention_stats,
    describe,
    mean_of_rows,
    parameter_scopes,
    weight_stats,
)
from gsit.data import make_synthetic, save_converted  # noqa: E402
from gsit.errors import GsitError  # noqa: E402
from gsit.models.gsit import GsiT, GsiTConfig  # noqa: E402
from gsit.models.mult import MulT, MulTConfig  # noqa: E402
from gsit.models.vanilla import Vanilla  # noqa: E402

DIMS = {"text": 12, "audio": 5, "vision": 7}


def scipy_row(x) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64).ravel()
    return {
        "mean": float(np.mean(x)),
        "variance": float(np.var(x)),
        "skewness": float(scipy_stats.skew(x, bias=True)),
        "kurtosis": float(scipy_stats.kurtosis(x, fisher=True, bias=True)),
    }


def assert_matches(ours: dict, ref: dict, rel: float = 1e-9) -> None:
    for s in STATS:
        assert ours[s] == pytest.approx(ref[s], rel=rel, abs=1e-12), s


def gsit_model(**kw) -> GsiT:
    return GsiT(GsiTConfig(input_dims=DIMS, d_model=8, num_heads=2, num_layers=2, **kw))


def mult_model(**kw) -> MulT:
    return MulT(MulTConfig(input_dims=DIMS, d_model=8, num_heads=2, num_layers=2, **kw))


def batch(lengths=(9, 11, 10)):
    g = torch.Generator().manual_seed(0)
    B = 3
    inputs = {
        "text": torch.randn(B, 9, 12, generator=g),
        "audio": torch.randn(B, 11, 5, generator=g),
        "vision": torch.randn(B, 10, 7, generator=g),
    }
    lens = {
        "text": torch.tensor([9, lengths[0], 6]),
        "audio": torch.tensor([11, lengths[1], 5]),
        "vision": torch.tensor([10, lengths[2], 7]),
    }
    return inputs, lens


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).gamma(2.0, size=5001),  # skewed, heavy right tail
        np.random.default_rng(1).normal(size=4000),  # ~0 / 1 / 0 / 0
        np.random.default_rng(2).uniform(-0.1, 0.1, size=3000),  # kurtosis ~ -1.2
        1e3 + np.random.default_rng(3).standard_t(5, size=2000) * 1e-2,  # large mean, small spread
        np.array([0.0, 0.0, 0.0, 1.0]),  # a tiny hand case: skew 1.1547, kurtosis -0.6667
    ],
)
def test_moments_match_scipy_stats_on_known_arrays(values):
    assert_matches(describe(values), scipy_row(values), rel=1e-7 if values.mean() > 100 else 1e-9)
    assert describe(torch.as_tensor(values, dtype=torch.float64))["n"] == values.size


def test_moments_merged_in_uneven_chunks_equal_the_whole():
    x = np.random.default_rng(4).lognormal(size=7777)
    m = Moments()
    for chunk in np.split(x, [1, 2, 50, 51, 3000, 7000]):
        m.add(chunk)
    other = Moments().add(x[:10])
    m2 = Moments().add(x[10:]).merge(Moments()).merge(other)  # an empty merge is a no-op; order is free
    assert_matches(m.stats(), scipy_row(x))
    assert_matches(m2.stats(), scipy_row(x))


def test_moments_hand_values_and_undefined_cases():
    row = describe(np.array([0.0, 0.0, 0.0, 1.0]))
    assert row["mean"] == 0.25 and row["variance"] == pytest.approx(0.1875)
    assert row["skewness"] == pytest.approx(2 / np.sqrt(3)) and row["kurtosis"] == pytest.approx(-2 / 3)
    assert describe(np.linspace(-1, 1, 200001))["kurtosis"] == pytest.approx(-1.2, abs=1e-4)  # uniform
    const = describe(np.full(10, 0.1))
    assert const["variance"] == pytest.approx(0.0, abs=1e-30)
    assert np.isnan(const["skewness"]) and np.isnan(const["kurtosis"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns about the cancellation, then says NaN
        assert np.isnan(scipy_stats.skew(np.full(10, 0.1)))  # scipy agrees: undefined, not 0
    empty = describe(np.zeros(0))
    assert empty["n"] == 0 and all(np.isnan(empty[s]) for s in STATS)


def test_paper_overall_row_is_the_mean_of_its_scope_rows():
    """The convention behind our ``overall`` row: the paper's GsiT overall row is the mean of its three
    scope rows in all four statistics (to the table's 4 decimals); MulT's kurtosis is 0.001 off."""
    for model, tol in (("gsit", 1e-4), ("mult", 1.5e-3)):
        p = PAPER_TABLE5[model]
        rows = [dict(zip(STATS, p[s]), n=1) for s in FUSION_SCOPES]
        mean = mean_of_rows(rows)
        for i, s in enumerate(STATS):
            assert mean[s] == pytest.approx(p["overall"][i], abs=tol), (model, s)


# ----------------------------------------------------------------------------- scopes
def test_gsit_scopes_cover_every_parameter_once_with_the_spec_counts():
    for share in (True, False):
        model = gsit_model(share_layers=share)
        scopes = parameter_scopes(model)
        assert set(scopes) == {n for n, _ in model.named_parameters()}
        count = {
            s: sum(p.numel() for n, p in model.named_parameters() if scopes[n] == s) for s in FUSION_SCOPES
        }
        d, L = 8, 1 if share else 2

        def enc(D, L=L):  # SPEC §12: L layers of 12D^2 + 13D, plus the final LayerNorm
            return L * (12 * D * D + 13 * D) + 2 * D

        assert count == {"cross_forward": enc(d), "cross_backward": enc(d), "self": enc(2 * d)}
        assert {s for s in scopes.values()} == {*FUSION_SCOPES, "front_end", "head"}


def test_mult_scopes_follow_gsit_forward_cycle_and_count_like_spec():
    model = mult_model(share_layers=True)
    scopes = parameter_scopes(model)
    assert set(scopes) == {n for n, _ in model.named_parameters()}
    fwd = {n.split(".")[1] for n, s in scopes.items() if s == "cross_forward"}
    bwd = {n.split(".")[1] for n, s in scopes.items() if s == "cross_backward"}
    assert fwd == {"text->vision", "vision->audio", "audio->text"}
    assert bwd == {"text->audio", "vision->text", "audio->vision"}
    assert all(n.startswith("mem.") for n, s in scopes.items() if s == "self")
    d = 8
    count = {s: sum(p.numel() for n, p in model.named_parameters() if scopes[n] == s) for s in FUSION_SCOPES}
    # SPEC §12: a shared encoder is 12D^2 + 15D; MulT = 3 forward + 3 backward (D=d) + 3 mem (D=2d)
    assert count == {
        "cross_forward": 3 * (12 * d * d + 15 * d),
        "cross_backward": 3 * (12 * d * d + 15 * d),
        "self": 3 * (12 * 4 * d * d + 30 * d),
    }


def test_scope_table_catches_an_unmapped_or_doubly_mapped_parameter():
    model = gsit_model()
    model.extra_head = nn.Linear(2, 2)  # a parameter the table does not name (e.g. a renamed module)
    with pytest.raises(GsitError, match=r"'extra_head.weight'.*matches 0 scope rules"):
        parameter_scopes(model)
    model = mult_model()
    rules = ws.scope_rules(model) + [("cross.text->vision.layers.", "self")]
    with pytest.raises(GsitError, match=r"matches 2 scope rules"):
        parameter_scopes(model, rules)
    with pytest.raises(GsitError, match="GsiT or MulT"):
        parameter_scopes(Vanilla(GsiTConfig(input_dims=DIMS, d_model=8, num_heads=2, num_layers=1)))


def test_weight_stats_rows_equal_scipy_on_the_selected_tensors():
    torch.manual_seed(0)
    model = mult_model()
    scopes = parameter_scopes(model)
    res = weight_stats(model, "matrices", keep_values=True)
    for scope in FUSION_SCOPES:
        mats = [p for n, p in model.named_parameters() if scopes[n] == scope and p.dim() >= 2]
        vals = torch.cat([p.detach().reshape(-1) for p in mats]).double().numpy()
        assert_matches(res["rows"][scope], scipy_row(vals))
        assert res["values"][scope].size == vals.size
        assert all("norm" not in n and not n.endswith("bias") for n in res["tensors"][scope])
    pooled = np.concatenate([res["values"][s] for s in FUSION_SCOPES]).astype(np.float64)
    assert_matches(res["rows"]["fusion_pooled"], scipy_row(pooled), rel=1e-6)
    assert_matches(res["rows"]["overall"], mean_of_rows(res["rows"][s] for s in FUSION_SCOPES))
    every = weight_stats(model, "all")["rows"]
    n_all = sum(p.numel() for n, p in model.named_parameters() if scopes[n] == "self")
    assert every["self"]["n"] == n_all > res["rows"]["self"]["n"]  # LayerNorm weights and biases join


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("make", [gsit_model, mult_model])
def test_attention_allowed_rows_sum_to_one_and_padding_free_valid_equals_allowed(make):
    torch.manual_seed(0)
    model = make()
    inputs, lengths = batch()
    res = attention_stats(model, inputs, lengths)
    assert set(res["scopes"]) == set(FUSION_SCOPES)
    H, B = 2, 3
    for name, enc in res["encoders"].items():
        a = enc["allowed"]
        # every query row has >= 1 allowed key and sums to 1: sum of all entries = rows x heads x calls
        if isinstance(model, GsiT):
            n_rows = sum(inputs[m].shape[1] - 4 for m in DIMS)
        else:
            n_rows = inputs[name.split("[")[1].split("-")[0].rstrip("]")].shape[1] - 4
        assert a["mean"] * a["n"] == pytest.approx(B * H * enc["calls"] * n_rows, rel=1e-6), name
        assert enc["valid"]["n"] < a["n"]  # this batch has padding
        assert sum(enc["hist"]["allowed"]) == a["n"]
    full_inputs, full = batch(lengths=(9, 11, 10))
    full = {m: torch.full_like(v, full_inputs[m].shape[1]) for m, v in full.items()}
    res = attention_stats(model, full_inputs, full)
    for enc in res["encoders"].values():
        assert enc["valid"] == enc["allowed"]  # no padding: the two populations are the same entries


def test_attention_hooks_refuse_probabilities_that_miss_the_call(monkeypatch):
    model = gsit_model()
    inputs, lengths = batch()

    def uniform(q, k, mask, *, scale):  # wrong on purpose
        allowed = mask.dense_mask(q.device).float()
        w = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)
        return w.expand(q.shape[0], q.shape[1], -1, -1)

    monkeypatch.setattr(ws, "attention_weights", uniform)
    with pytest.raises(GsitError, match="miss the call's output"):
        attention_stats(model, inputs, lengths)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed after the failure


# ----------------------------------------------------------------------------- the command on trained runs
TINY = {"model.d_model": 8, "model.num_layers": 1, "train.max_epochs": 1, "train.batch_size": 16}
# GsiT trained with a learning rate so small that no nonzero weight can change in float32: its best
# checkpoint IS its initialisation, which tests that init_weights re-creates gsit train's start exactly
FROZEN = {"train.learning_rate_other": 1e-30, "train.learning_rate_bert": 1e-30}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ws_runs")
    data = make_synthetic(n_train=32, n_valid=16, n_test=16, text_len=10, audio_len=12, vision_len=12, seed=1)
    data_dir = save_converted(data, root / "data")
    runs = {}
    for model, extra in (("gsit", FROZEN), ("mult_dagger", {})):
        res = gsit.run(
            model=model,
            dataset="synthetic",
            data=data_dir,
            seeds=[3],
            overrides={**TINY, **extra},
            run_dir=root / model,
        )
        runs[model] = res["run_dir"]
    return runs


def test_weight_stats_cli_end_to_end(tiny_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "ws"
    rc = cli.main(
        ["weight-stats", tiny_runs["gsit"], tiny_runs["mult_dagger"], "--out", str(out), "--samples", "8"]
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "paper GsiT (MOSI)" in printed.out and "gsit s3" in printed.out and "mult_dagger s3" in printed.out
    names = {p.name for p in out.iterdir()}
    assert names == {
        "weight_stats.csv",
        "weight_stats.json",
        "weight_stats.md",
        "weight_hist.png",
        "attention_hist.png",
    }
    with open(out / "weight_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds = {(r["column"], r["kind"]) for r in rows}
    for col in ("gsit s3", "mult_dagger s3"):
        for kind in ("weights", "init_weights", "attention_allowed", "attention_valid"):
            assert (col, kind) in kinds
    assert {r["scope"] for r in rows if r["kind"] == "paper_table5"} == {*FUSION_SCOPES, "overall"}
    assert any(r["scope"] == "cross_forward[text->vision]" for r in rows if r["column"] == "mult_dagger s3")
    doc = json.loads((out / "weight_stats.json").read_text())
    assert doc["tensors"] == "matrices" and "kurtosis" in doc["definitions"]
    gsit_col = next(c for c in doc["columns"] if c["model"] == "gsit")
    assert gsit_col["batch"] == {"split": "valid", "rows": 8, "ids": gsit_col["batch"]["ids"]}
    # the trained checkpoint's numbers are the checkpoint's: recompute one row from the loaded model
    model, _ = gsit.load_run(tiny_runs["gsit"], seed=3)
    ref = weight_stats(model)["rows"]["self"]
    assert_matches(gsit_col["weights"]["rows"]["self"], ref)
    # init_weights = the run's own start: equal to the frozen GsiT checkpoint, not to the trained MulT one
    for scope in (*FUSION_SCOPES, "front_end", "head"):
        assert gsit_col["init_weights"]["rows"][scope] == gsit_col["weights"]["rows"][scope], scope
    mult_col = next(c for c in doc["columns"] if c["model"] == "mult_dagger")
    assert mult_col["init_weights"]["rows"]["self"] != mult_col["weights"]["rows"]["self"]
    # never overwrite: a second run into the same folder is one clear error and changes nothing
    before = (out / "weight_stats.csv").read_bytes()
    rc = cli.main(["weight-stats", tiny_runs["gsit"], "--out", str(out), "--no-plots"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (out / "weight_stats.csv").read_bytes() == before


def test_weight_stats_cli_bad_inputs(tiny_runs, tmp_path, capsys):
    rc = cli.main(["weight-stats", str(tmp_path), "--out", str(tmp_path / "o"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a run directory" in err and str(tmp_path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written
    rc = cli.main(
        ["weight-stats", tiny_runs["gsit"], "--seeds", "99", "--no-plots", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no checkpoint for seed 99" in err
