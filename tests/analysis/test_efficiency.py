"""thop-convention MACs (SPEC §12): the paper's 26.224 G (GsiT fusion + conv) and 26.294 G (MulT-dagger incl.
its head) for one MOSI batch of 8 at full padded lengths, plus the counting rules on small modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gsit.analysis.efficiency import MULT_DAGGER_OVERRIDES, count_thop_macs, format_efficiency, thop_macs


def test_thop_macs_gsit_mosi_reproduces_paper():
    r = thop_macs("gsit", "mosi", batch=8)
    assert abs(r["fusion_plus_conv"] / 1e9 - 26.224) < 0.01
    # exact arithmetic: conv 8*128*(46*768*5 + 496*20*5 + 371*5*5); encoders 8*(2*enc(128) + enc(256)) with
    # enc(D) = N*(4*(9D^2 + 8D) + 4D) at N = 913
    n, d = 913, 128

    def enc(w):
        return n * (4 * (9 * w * w + 8 * w) + 4 * w)

    assert r["front_end"] == 8 * 128 * (46 * 768 * 5 + 496 * 20 * 5 + 371 * 5 * 5)
    assert r["fusion"] == 8 * (2 * enc(d) + enc(2 * d))
    assert r["paper_convention"] == r["fusion_plus_conv"]
    assert r["head"] == 8 * (6 * d * d + d)  # Linear(6d, d) + Linear(d, 1): with it 26.225 G
    assert abs(r["total"] / 1e9 - 26.225) < 0.001


def test_thop_macs_mult_dagger_mosi_reproduces_paper():
    r = thop_macs("mult_dagger", "mosi", batch=8)
    assert abs(r["total"] / 1e9 - 26.294) < 0.01
    assert r["paper_convention"] == r["total"]  # the paper counts MulT's head
    same = thop_macs("mult", "mosi", batch=8, overrides=MULT_DAGGER_OVERRIDES)
    assert same["total"] == r["total"]


def test_thop_rules_count_modules_per_call_and_skip_functional_ops():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 4, kernel_size=5, bias=False)
            self.ln = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 6)
            self.w = nn.Parameter(torch.randn(4, 4))

        def parameter_groups(self):
            return {
                "front_end": list(self.conv.parameters()),
                "fusion": [self.w, *self.ln.parameters()],
                "head": list(self.fc.parameters()),
            }

        def forward(self, inputs):
            h = self.conv(inputs["x"].transpose(1, 2)).transpose(1, 2)  # (2, 6, 4)
            for _ in range(3):  # one module called three times: counted three times
                h = self.ln(h)
            h = nn.functional.linear(h, self.w)  # functional: not counted (like the packed in_proj)
            h = h @ h.transpose(1, 2) @ h  # matmuls: not counted
            return self.fc(h)

    c = count_thop_macs(Toy(), {"x": torch.randn(2, 10, 3)})
    assert c["by_type"] == {
        "Conv1d": 2 * 6 * 4 * 3 * 5,
        "LayerNorm": 3 * 4 * 2 * 6 * 4,
        "Linear": 2 * 6 * 6 * 4,
    }
    assert c["by_part"] == {"front_end": 2 * 6 * 4 * 3 * 5, "fusion": 3 * 4 * 48, "head": 2 * 6 * 6 * 4}


def test_format_efficiency_table():
    row = {
        "model": "gsit",
        "dataset": "mosi",
        "params": {"total_without_text_encoder": 1793409, "paper_convention": 1694848},
        "flops_per_sample": {"total": 11.2e9, "attention": 2.5e9},
        "thop": {"total": 26225029120, "paper_convention": 26224241664, "batch": 8},
        "paper_flops_g": 26.224,
        "paper_params_m": 1.695,
    }
    text = format_efficiency([row])
    assert "1,694,848" in text and "26.224" in text and "thop" in text


@pytest.mark.slow
def test_efficiency_cli_prints_every_model(capsys):
    from gsit.cli import main

    assert main(["efficiency", "--dataset", "mosi"]) == 0
    out = capsys.readouterr().out
    assert "mult_dagger" in out and "26.294" in out and "26.224" in out


def test_step_cost_measures_a_training_step_and_changes_the_weights():
    """step_cost times real training steps of the chosen backend; the table shows them."""
    from gsit.analysis.efficiency import step_cost

    res = step_cost(
        "gsit",
        "mosi",
        batch=2,
        device="cpu",
        warmup=1,
        reps=2,
        overrides=("model.d_model=16", "model.num_layers=1"),
    )
    assert res["reps"] == 2 and res["backend"] == "pairs" and res["device"] == "cpu"
    assert 0 < res["p10_ms"] <= res["median_ms"] <= res["p90_ms"]
    assert res["peak_mem_mb"] is None  # not tracked on CPU
    with pytest.raises(ValueError, match="unknown attention backend"):
        step_cost("gsit", "mosi", batch=2, backend="nope", overrides=("model.d_model=16",))
    row = {
        "model": "gsit",
        "dataset": "mosi",
        "params": {"total_without_text_encoder": 1793409, "paper_convention": 1694848},
        "flops_per_sample": {"total": 11.2e9, "attention": 2.5e9},
        "thop": {"total": 26225029120, "paper_convention": 26224241664, "batch": 8},
        "paper_flops_g": 26.224,
        "paper_params_m": 1.695,
        "step": res,
    }
    text = format_efficiency([row])
    assert "step ms (B)" in text and "Adam" in text
