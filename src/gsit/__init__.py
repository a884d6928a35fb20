"""gsit: GsiT (ACL 2025) -- hierarchical modal-wise heterogeneous graph transformers for multimodal
sentiment and intent analysis, with MulT and Vanilla baselines, MMSA-exact metrics and fast graph attention.

``import gsit`` needs only torch and numpy (no CUDA, no Triton, no transformers)."""

__version__ = "0.1.0"

from gsit.graph import GraphMask, ModalGraph, SequenceLayout  # noqa: E402

__all__ = ["GraphMask", "ModalGraph", "SequenceLayout", "__version__"]
