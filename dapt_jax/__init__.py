"""dapt-jax: DAPT (parameter-efficient fine-tuning of Point-MAE) in JAX/Flax.

    import dapt_jax
    predictor = dapt_jax.load('runs/mine')      # a training workdir → dapt_jax.serve.Predictor
    probs = predictor.predict(clouds)           # [B, C] class probabilities

Python runs this file before any submodule of the package, so it imports nothing at module
level (`import dapt_jax.data` stays as light as before); `load` imports the API when called.
"""


def load(path, config=None):
  """A fine-tuned model for use from Python: see `dapt_jax.serve.load`."""
  from dapt_jax import serve  # pylint: disable=g-import-not-at-top  (JAX only when used)
  return serve.load(path, config)
