"""A trained run as a product: `export` (a `jax.export` artifact with its weights and a
manifest), `artifact` (loads one with jax and numpy alone), `predict` (the command line),
`server` (HTTP with dynamic batching). The `jaxmodels` console script runs them."""
