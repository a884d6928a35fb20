"""Model building: the one name -> model registry, the text encoder, and the preflight check that a run's
model can be built on its data before anything is written."""

from __future__ import annotations

import torch

from gsit.config import RunConfig, build_model_config
from gsit.data.dataset import check_token_ids
from gsit.errors import ConfigError, GsitError
from gsit.models.registry import model_class
from gsit.models.text import BertTextEncoder


def data_input_dims(data, text_encoder) -> dict[str, int]:
    dims = {"audio": int(data.audio_dim), "vision": int(data.vision_dim)}
    if text_encoder is not None:
        dims["text"] = int(text_encoder.out_dim)
    elif data.text_kind == "bert":
        raise ConfigError(
            f"the data at {data.source!r} holds text as token ids (text_bert); pass a local BERT-family "
            f"model directory with --text-encoder DIR (nothing is downloaded)"
        )
    else:
        dims["text"] = int(data.text_dim)
    return dims


def load_text_encoder(run: RunConfig, data):
    if data.text_kind != "bert":
        return None
    if not run.data.text_encoder:
        data_input_dims(data, None)  # raises the clear error
    try:  # transformers >= 5 draws a "Loading weights" progress bar on stderr: keep logs to gsit's own lines
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - no transformers: from_pretrained reports it
        hf_logging, bar_was_on = None, False
    try:
        encoder = BertTextEncoder.from_pretrained(run.data.text_encoder)
    finally:
        if hf_logging is not None and bar_was_on:
            hf_logging.enable_progress_bar()
    check_token_ids(
        data,
        getattr(encoder.bert.config, "vocab_size", None),
        vocabulary=f" of the text encoder {run.data.text_encoder!r}",
    )
    return encoder


def preflight(run: RunConfig, data) -> None:
    """Build the model once (and load the text encoder) so that a bad model setting, text encoder, token
    id, too-short sequence or accumulation window fails before a run directory is created or written."""
    t = run.train
    n_train = len(data.splits["train"])
    n_batches = -(-n_train // t.batch_size)
    if t.accumulation_steps > n_batches:
        raise ConfigError(
            f"train.accumulation_steps={t.accumulation_steps} is longer than the {n_batches} training "
            f"batch(es) of an epoch ({n_train} train rows / train.batch_size={t.batch_size}): "
            f"the optimizer would never step (the partial window is dropped); lower "
            f"train.accumulation_steps or train.batch_size"
        )
    try:
        model = build_model(run, data, load_text_encoder(run, data))
    except (ValueError, TypeError) as e:
        if isinstance(e, GsitError):
            raise
        raise ConfigError(f"the {run.model_name} model cannot be built from [model]: {e}") from None
    kernels = getattr(getattr(model, "config", None), "kernel_sizes", None) or {}
    lengths = data.seq_lengths
    for m, k in kernels.items():
        if m in lengths and lengths[m] < int(k):
            raise ConfigError(
                f"model.kernel_sizes: the {m} conv kernel {int(k)} is longer than the data's "
                f"{m} sequences (length {lengths[m]}); set e.g. "
                f"model.kernel_sizes={{{m}=1, ...}}"
            )


def build_model(run: RunConfig, data, text_encoder=None) -> torch.nn.Module:
    """The run's model with input widths and output size read from the data."""
    output_dim = int(data.num_classes) if data.task == "classification" else 1
    cfg = build_model_config(run, input_dims=data_input_dims(data, text_encoder), output_dim=output_dim)
    return model_class(run.model_name)(cfg, text_encoder=text_encoder)
