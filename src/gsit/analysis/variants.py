"""The variants ``gsit ablate`` knows (paper Table 4's mask structures, the baselines, controls): plain
data, importable without torch, so ``gsit ablate --help`` can list them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # id used on the command line and as the sub-run directory
    label: str  # row label in the table
    model: str  # gsit | mult | vanilla
    overrides: tuple[str, ...] = ()
    note: str = ""


# the contrastive variants' settings, chosen before any run (not tuned): weight 0.1 keeps the term (about
# 0.1 x ln(batch size) at the start) below the L1 task loss; temperature 0.1 as SimCLR's usual value
CONTRASTIVE = ("train.contrastive_weight=0.1", "train.contrastive_temperature=0.1")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "original",
            "Original",
            "gsit",
            ('model.structure="original"',),
            "forward/backward interlaced cycles (SPEC §5)",
        ),
        Variant("structure1", "Structure-1", "gsit", ('model.structure="structure1"',), "Appendix C"),
        Variant("structure2", "Structure-2", "gsit", ('model.structure="structure2"',), "Appendix C"),
        Variant("structure3", "Structure-3", "gsit", ('model.structure="structure3"',), "Appendix C"),
        Variant("self_only", "Self-Only", "gsit", ('model.structure="self_only"',), "no cross-modal edges"),
        Variant(
            "bidirectional",
            "Bidirectional",
            "gsit",
            ('model.structure="bidirectional"',),
            "one joint softmax over both other modalities (SPEC §7)",
        ),
        Variant(
            "share_layers_false",
            "share_layers=false",
            "gsit",
            ("model.share_layers=false",),
            "distinct weights per depth",
        ),
        Variant(
            "official_code",
            "attention_semantics=official_code",
            "gsit",
            ('model.attention_semantics="official_code"',),
            "scale 1/head_dim, no attention dropout (SPEC §6)",
        ),
        Variant(
            "padding_aware",
            "padding_aware=true",
            "gsit",
            ("model.padding_aware=true",),
            "padding never attended nor pooled (a deviation from the paper)",
        ),
        Variant("mult", "MulT", "mult", (), "baseline, its preset"),
        Variant("vanilla", "Vanilla", "vanilla", (), "one unmasked transformer (paper Table 8)"),
        Variant(
            "text_only",
            "Text-only control",
            "gsit",
            ('data.zero_modalities=["audio", "vision"]',),
            "GsiT with audio and vision features zeroed",
        ),
        # not in the default set: training-time modality dropout (pair with ``gsit robustness``)
        Variant(
            "modality_dropout",
            "modality_dropout=0.3",
            "gsit",
            ("train.modality_dropout=0.3",),
            "each sample's audio and vision zeroed with probability 0.3 during training",
        ),
        # not in the default set: the optional contrastive objective (issue #16, open question 3), at the
        # weight and temperature fixed a priori (CONTRASTIVE), for GsiT and for the MulT baseline
        Variant(
            "contrastive",
            "Original + contrastive",
            "gsit",
            ('model.structure="original"', *CONTRASTIVE),
            "InfoNCE between the per-modality summaries of a sample (weight 0.1, temperature 0.1)",
        ),
        Variant(
            "mult_contrastive",
            "MulT + contrastive",
            "mult",
            CONTRASTIVE,
            "MulT (its preset) + InfoNCE between its mem encoders' last steps (weight 0.1, temperature 0.1)",
        ),
    )
}
OPTIONAL_VARIANTS = ("modality_dropout", "contrastive", "mult_contrastive")
DEFAULT_VARIANTS = tuple(n for n in VARIANTS if n not in OPTIONAL_VARIANTS)
