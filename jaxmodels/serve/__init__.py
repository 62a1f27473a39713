"""A trained run as a product: `artifact_export` writes a `jax.export` artifact with its
weights and a manifest, `artifact` loads one with jax and numpy alone, `exported_model`
gives its top-k records, and `app` serves it over HTTP with dynamic batching (FastAPI, the
`serve` extra; imported only by `jaxmodels serve`)."""
from jaxmodels.serve.artifact import Artifact, top_k
from jaxmodels.serve.artifact_export import PLATFORMS, export_run
from jaxmodels.serve.exported_model import load_exported, predictions

__all__ = ['Artifact', 'export_run', 'load_exported', 'PLATFORMS', 'predictions', 'top_k']
