"""Infer: the model contract, adapters and the per-batch tasks (torch imported lazily)."""

from tilegraph.infer.spec import PRECISIONS, ModelSpec, describe_model

__all__ = ["PRECISIONS", "ModelSpec", "describe_model"]
