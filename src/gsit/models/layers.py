"""Building blocks shared by GsiT, MulT and Vanilla: the conv front end, the model-input checks, fairseq's
Linear initialisation, and :func:`attach_view`.  GsiT's graph-masked encoder lives in models/gsit.py."""

from __future__ import annotations

import torch
from torch import nn

from gsit.errors import DataError


class ConvFrontEnd(nn.Module):
    """One temporal ``Conv1d(in, d, k, padding=0, bias=False)`` per modality (SPEC §3).

    Output length is ``T - k + 1``.  A sample's valid length after the conv is ``len - k + 1`` (at least 1
    when ``len > 0``: a short sequence still fills position 0 through the zero padding).
    """

    def __init__(
        self,
        *,
        modalities: tuple[str, ...],
        input_dims: dict[str, int],
        d_model: int | dict[str, int],
        kernel_sizes: dict[str, int],
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.kernel_sizes = {m: int(kernel_sizes[m]) for m in self.modalities}
        widths = d_model if isinstance(d_model, dict) else {m: int(d_model) for m in self.modalities}
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.convs = nn.ModuleDict(
            {
                m: nn.Conv1d(
                    self.input_dims[m], widths[m], kernel_size=self.kernel_sizes[m], padding=0, bias=False
                )
                for m in self.modalities
            }
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B, T_m, D_m) per modality -> (B, T_m - k + 1, d) per modality."""
        return {m: self.convs[m](features[m].transpose(1, 2)).transpose(1, 2) for m in self.modalities}

    def output_lengths(self, lengths: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.modalities:
            n = lengths[m].long()
            out[m] = torch.where(n > 0, (n - self.kernel_sizes[m] + 1).clamp(min=1), torch.zeros_like(n))
        return out


NAN_POLICIES = ("auto", "error", "ignore")


def check_modal_inputs(
    features: dict[str, torch.Tensor],
    *,
    input_dims: dict[str, int],
    kernel_sizes: dict[str, int],
    nan_policy: str = "auto",
) -> None:
    """One clear ``DataError`` naming the modality and shapes for bad model inputs.

    ``nan_policy``: ``"auto"`` checks for NaN/inf on CPU tensors only -- on a GPU the check would force a
    device-to-host sync every forward, and data read by gsit's loaders is already rejected at load time
    with an error naming the file and key; ``"error"`` always checks; ``"ignore"`` never does."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy {nan_policy!r} unknown; known: {list(NAN_POLICIES)}")
    batch = None
    for m, dim in input_dims.items():
        if m not in features:
            raise DataError(f"model input is missing modality {m!r}; got {sorted(features)}")
        x = features[m]
        if x.dim() != 3:
            raise DataError(f"modality {m!r}: expected a (B, T, {dim}) tensor, got shape {tuple(x.shape)}")
        if x.shape[-1] != dim:
            raise DataError(
                f"modality {m!r}: feature width {x.shape[-1]} != configured {dim} (shape {tuple(x.shape)})"
            )
        if x.shape[1] < kernel_sizes[m]:
            raise DataError(
                f"modality {m!r}: sequence length {x.shape[1]} is shorter than the conv kernel "
                f"{kernel_sizes[m]} (shape {tuple(x.shape)})"
            )
        if batch is None:
            batch = (m, tuple(x.shape))
        elif x.shape[0] != batch[1][0]:
            raise DataError(
                f"batch sizes differ: {batch[0]!r} has shape {batch[1]}, {m!r} has shape {tuple(x.shape)}"
            )
        check = nan_policy == "error" or (nan_policy == "auto" and x.device.type == "cpu")
        if check and x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError(
                f"modality {m!r}: input contains NaN or inf (shape {tuple(x.shape)}); "
                f"set model.nan_policy='ignore' to pass it through"
            )


def xavier_linear_(layer: nn.Linear) -> nn.Linear:
    """Xavier-uniform weight, zero bias (fairseq's Linear); returns ``layer``."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def attach_view(owner: nn.Module, name: str, view: nn.Module) -> None:
    """Keep ``view`` as ``owner.<name>`` without registering it as a submodule.

    Used where a model's story module (GsiT's embedding, MulT's fusion) is built from parts the model
    registers on itself under the names its checkpoints have always held (``front_end.*``, ``cross.*``):
    registering the view as well would list every one of those parameters twice in the state_dict.  The
    view may hold no tensors of its own and every child must already be registered on ``owner``, so
    ``.to()``, ``.train()``/``.eval()`` and ``state_dict`` of the owner reach everything the view runs (the
    view's own ``training`` flag is never read)."""
    owned = {id(m) for m in owner.children()}
    stray = [n for n, m in view.named_children() if id(m) not in owned]
    if stray or list(view.parameters(recurse=False)) or list(view.buffers(recurse=False)):
        raise ValueError(
            f"{type(view).__name__} holds parts its owner does not register ({stray} or own "
            f"tensors); register it as a submodule instead"
        )
    object.__setattr__(owner, name, view)
