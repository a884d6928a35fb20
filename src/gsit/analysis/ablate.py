"""``gsit ablate``: train the paper's mask ablations (Table 4) plus design switches, the baselines and a
text-only control, and write one table (CSV + Markdown) in Table 4's layout.

Every variant is an ordinary ``gsit train`` run (:func:`gsit.train.run_training`) in its own sub-run
directory ``OUT/<variant>/`` with a ``variant.json`` naming the variant and its overrides, so ``gsit report``
and ``gsit robustness`` work on them too.  Rows are variants; columns are the dataset's primary metrics
(:func:`gsit.metrics.primary_metric_names`) as mean ± std over seeds (population std, as ``results.json``),
plus the number of seeds.  Selection is on validation loss as always; the table reports test metrics.

On the generated synthetic dataset (``--dataset synthetic`` without ``--data``) the ablation uses the
associative-recall task (``data.synthetic_task="recall"``, :func:`gsit.data.synthetic.make_synthetic`) unless
an override or the ``--config`` file sets ``data.synthetic_task``: its label needs text to attend to audio,
so Self-Only and the text-only control cannot solve it, whereas the default ``sign`` task of ``gsit train``
can be solved by the head multiplying per-modality summaries.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from gsit.analysis._common import (
    csv_text,
    fmt_mean_std,
    markdown_table,
    metric_dataset,
    new_dir,
    read_data,
    write_json_new,
    write_text_new,
)
from gsit.analysis.variants import DEFAULT_VARIANTS, VARIANTS, Variant  # noqa: F401 (re-exported)
from gsit.config import load_config, model_config_class, read_toml
from gsit.errors import GsitError
from gsit.metrics import primary_metric_names
from gsit.train import run_training

ABLATION_SYNTHETIC_TASK = "recall"  # the generated synthetic task an ablation uses unless told otherwise


def synthetic_task_overrides(
    dataset: str, data_path: str | None, overrides=(), config: str | None = None
) -> list[str]:
    """``['data.synthetic_task="recall"']`` when the ablation generates the synthetic dataset and neither an
    override nor the ``config`` file chooses the task; else ``[]``."""
    if dataset != "synthetic" or data_path:
        return []
    if any(o.split("=", 1)[0].strip() in ("data.synthetic_task", "data.path") for o in overrides):
        return []
    if config is not None:
        if {"synthetic_task", "path"} & set(read_toml(Path(config)).get("data", {})):
            return []
    return [f'data.synthetic_task="{ABLATION_SYNTHETIC_TASK}"']


def _model_keys(model: str) -> set[str]:
    return {f.name for f in dataclasses.fields(model_config_class(model))}


def variant_overrides(variant: Variant, overrides=()) -> tuple[list[str], list[str]]:
    """(overrides to apply, overrides skipped): ``model.*`` overrides the variant's model does not know
    (e.g. ``model.structure`` for MulT) are skipped; train/data overrides always apply.  The variant's own
    overrides come last, so they win."""
    known = _model_keys(variant.model)
    use, skipped = [], []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        parts = key.split(".")
        if parts[0] == "model" and len(parts) == 2 and parts[1] not in known:
            skipped.append(o)
        else:
            use.append(o)
    return use + list(variant.overrides), skipped


def parse_variants(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_VARIANTS
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise GsitError(f"unknown ablation variants {unknown}; known: {list(VARIANTS)}")
    return names


def run_ablation(
    dataset: str,
    *,
    data_path: str | None = None,
    out: str | Path | None = None,
    seeds: tuple[int, ...] | None = None,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    overrides: tuple[str, ...] = (),
    text_encoder: str | None = None,
    config: str | None = None,
    quiet: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Train every variant into ``out/<variant>/`` and write ``ablation.csv``, ``ablation.md`` and
    ``ablation.json`` in ``out``.  Returns ``{"out", "metrics", "rows"}``."""
    names = parse_variants(",".join(variants)) if variants else DEFAULT_VARIANTS
    out_dir = new_dir(out, default_root=Path("runs"), prefix=f"ablation-{dataset}")
    common = synthetic_task_overrides(dataset, data_path, overrides, config) + list(overrides)
    if data_path:
        common.append(f'data.path="{Path(data_path)}"')
    if text_encoder:
        common.append(f'data.text_encoder="{Path(text_encoder)}"')
    if seeds:
        common.append(f"train.seeds={list(seeds)}")
    metrics = primary_metric_names(metric_dataset(dataset))
    data_cache: dict[Any, Any] = {}
    rows = []
    sources: list[str] = []
    for name in names:
        v = VARIANTS[name]
        use, skipped = variant_overrides(v, common)
        encoder = [o for o in use if o.startswith("data.text_encoder=")]
        if (
            encoder
            and load_config(v.model, dataset, config, [o for o in use if o not in encoder]).data.text_kind
            == "features"
        ):
            # a variant whose preset reads the frozen text features (MulT, as MMSA) uses no text encoder
            use, skipped = [o for o in use if o not in encoder], skipped + encoder
        run = load_config(v.model, dataset, config, use)
        key = json.dumps(dataclasses.asdict(run.data), sort_keys=True)
        if key not in data_cache:
            data_cache[key] = read_data(run)
        if not quiet:
            print(f"ablation variant {name}: {v.model} {' '.join(use)}", file=sys.stderr)
        if str(data_cache[key].source) not in sources:
            sources.append(str(data_cache[key].source))
        run_dir = out_dir / name
        results = run_training(
            run,
            data_cache[key],
            run_dir=run_dir,
            quiet=quiet,
            device=device,
            command=["gsit", "ablate", "--variant", name, *use],
        )
        write_json_new(
            run_dir / "variant.json",
            {
                "variant": name,
                "label": v.label,
                "model": v.model,
                "overrides": list(v.overrides),
                "skipped_overrides": skipped,
                "note": v.note,
            },
        )
        rows.append(
            {
                "variant": name,
                "label": v.label,
                "model": v.model,
                "n_seeds": results["n_seeds"],
                "mean": {m: results["mean"].get(m, float("nan")) for m in metrics},
                "std": {m: results["std"].get(m, float("nan")) for m in metrics},
                "run_dir": str(run_dir),
                "skipped_overrides": skipped,
            }
        )
    write_ablation_table(out_dir, dataset, metrics, rows, sources=sources)
    return {"out": str(out_dir), "metrics": metrics, "rows": rows}


def write_ablation_table(
    out_dir: Path,
    dataset: str,
    metrics: list[str],
    rows: list[dict[str, Any]],
    sources: list[str] | tuple[str, ...] = (),
) -> None:
    header = ["variant", "model", "n_seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    body = [
        [r["variant"], r["model"], r["n_seeds"]] + [r[s][m] for m in metrics for s in ("mean", "std")]
        for r in rows
    ]
    write_text_new(out_dir / "ablation.csv", csv_text(header, body))
    md_rows = [
        [r["label"]] + [fmt_mean_std(r["mean"][m], r["std"][m]) for m in metrics] + [r["n_seeds"]]
        for r in rows
    ]
    md = (
        f"Ablation on {dataset} (test split; mean ± std over seeds; model selected on validation loss)\n\n"
        + "".join(f"Data: {src}\n\n" for src in sources)
        + markdown_table(["Variant"] + metrics + ["n_seeds"], md_rows)
    )
    write_text_new(out_dir / "ablation.md", md)
    write_json_new(
        out_dir / "ablation.json",
        {"dataset": dataset, "metrics": metrics, "rows": rows, "data_sources": list(sources)},
    )
