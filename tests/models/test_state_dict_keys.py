"""Checkpoints written before the model files were reorganised still load: the state_dict key names (and
shapes) of GsiT, Vanilla and MulT equal the list recorded from the code before the moves
(tests/fixtures/state_dict_keys.json, written by the pre-move models at their default configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gsit.models.gsit import GsiT, GsiTConfig
from gsit.models.mult import MulT, MulTConfig, MulTFusion
from gsit.models.vanilla import Vanilla

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "state_dict_keys.json").read_text())
BUILDERS = {
    "gsit": lambda: GsiT(GsiTConfig()),
    "gsit_unshared": lambda: GsiT(GsiTConfig(share_layers=False)),
    "vanilla": lambda: Vanilla(GsiTConfig()),
    "mult": lambda: MulT(MulTConfig()),
    "mult_dagger": lambda: MulT(MulTConfig(d_model=128, num_heads=4, share_layers=True)),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_keys_equal_the_recorded_pre_move_keys(name):
    model = BUILDERS[name]()
    got = [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    assert got == RECORDED[name]
    # and a state_dict with exactly those names and shapes loads strictly into a fresh model
    recorded = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    BUILDERS[name]().load_state_dict(recorded, strict=True)


def test_mult_fusion_is_the_models_fusion_and_registers_each_parameter_once():
    model = MulT(MulTConfig(d_model=16, num_heads=2, num_layers=1))
    assert isinstance(model.fusion, MulTFusion)
    assert model.fusion.cross is model.cross and model.fusion.mem is model.mem
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("fusion.") for n in names)
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    # a fusion built alone owns its encoders (the benchmark times it without the rest of MulT)
    alone = MulTFusion(MulTConfig(d_model=16, num_heads=2, num_layers=1))
    assert sum(p.numel() for p in alone.parameters()) == sum(
        p.numel() for p in model.cross.parameters()
    ) + sum(p.numel() for p in model.mem.parameters())


def test_mult_forward_runs_its_fusion_module():
    torch.manual_seed(0)
    model = MulT(MulTConfig(d_model=16, num_heads=2, num_layers=1)).eval()
    x = {"text": torch.randn(2, 9, 768), "audio": torch.randn(2, 11, 5), "vision": torch.randn(2, 7, 20)}
    out = model(x)
    conv = model.front_end(x)
    last_hs = model.fusion(conv)  # (B, 6d)
    h = model.proj2(torch.relu(model.proj1(last_hs))) + last_hs
    torch.testing.assert_close(out["features"], h, rtol=0, atol=0)
