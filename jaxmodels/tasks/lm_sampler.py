"""Samples from a GPT during and after training: printed, and logged as TensorBoard text."""
import jax
import numpy as np

from jaxmodels import models
from jaxmodels.data import ByteTokenizer
from jaxmodels.errors import ConfigError
from jaxmodels.train import Callback


class Sampler(Callback):
  """Continuations of config.sample.prompt after every evaluation (and on request)."""

  def __init__(self, module: models.GPT, config, writer, say):
    self._module, self._cfg, self._writer, self._say = module, config.sample, writer, say
    prompt = ByteTokenizer.encode(self._cfg.prompt or '\n')
    self._max_new = min(self._cfg.max_new_tokens, module.max_length - len(prompt))
    if self._max_new <= 0:
      raise ConfigError(f'sample.prompt ({len(prompt)} bytes) leaves no room in data.seq_len='
                        f'{module.max_length}: shorten it', key='sample.prompt')
    self._prompt = np.tile(prompt, (self._cfg.num_samples, 1))
    self._rng = jax.random.PRNGKey(config.seed)

  def sample(self, params, step: int) -> list[str]:
    tokens = models.generate(self._module, params, self._prompt, jax.random.fold_in(self._rng, step),
                             max_new_tokens=self._max_new, temperature=self._cfg.temperature,
                             top_k=self._cfg.top_k, top_p=self._cfg.top_p)
    # Printable text only: an untrained model emits control bytes (terminal escapes, NUL).
    texts = [''.join(c if c.isprintable() or c in '\n\t' else '\ufffd'
                     for c in ByteTokenizer.decode(t)) for t in np.asarray(tokens)]
    for i, text in enumerate(texts):
      self._say(f'--- sample {i + 1} at step {step} ---\n{text}\n')
    self._writer.write_text(step, 'samples', '\n\n---\n\n'.join(texts))
    return texts

  def on_eval_end(self, step, logs, state):
    self.sample(state.params, step)
