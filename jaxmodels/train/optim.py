"""optax recipes: adam / adamw / sgd+momentum, schedules, clipping, masked weight decay."""
import jax
import jax.numpy as jnp
import optax

from jaxmodels.errors import ConfigError

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'warmup_cosine', 'one_cycle')


def decay_mask(params):
  """True for leaves that get weight decay: kernels and embeddings (ndim >= 2).

  Biases and norm scales/offsets are vectors (ndim <= 1) and are left alone.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int = 0,
                  end_lr_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup 0 -> peak over warmup_steps, then cosine to peak * end_lr_factor."""
  return optax.warmup_cosine_decay_schedule(
      0.0, peak_lr, warmup_steps, max(total_steps, warmup_steps + 1), peak_lr * end_lr_factor)


def one_cycle(peak_lr: float, total_steps: int, pct_start: float = 0.25,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> optax.Schedule:
  """Smith's one-cycle: cosine up from peak/div_factor, then down to peak/(div*final_div)."""
  return optax.cosine_onecycle_schedule(
      total_steps, peak_lr, pct_start, div_factor, final_div_factor)


def make_schedule(name: str, peak_lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
  if name == 'constant':
    return optax.constant_schedule(peak_lr)
  if name == 'warmup_cosine':
    return warmup_cosine(peak_lr, total_steps, warmup_steps)
  if name == 'one_cycle':
    return one_cycle(peak_lr, total_steps)
  raise ConfigError(f'unknown schedule {name!r}; choose one of {", ".join(SCHEDULES)}')


def make_optimizer(name: str, learning_rate, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = True, b1: float = 0.9,
                   b2: float = 0.999, clip_norm: float | None = None) -> optax.GradientTransformation:
  """adam (weight_decay adds L2 to the gradient), adamw (decoupled decay), or sgd with momentum.

  Decay uses `decay_mask`; `clip_norm` clips the global gradient norm first.
  """
  if weight_decay < 0:
    raise ConfigError(f'weight_decay must be >= 0, got {weight_decay}')
  # L2 for adam and sgd; skipped at 0 so that update() needs no params.
  l2 = [optax.add_decayed_weights(weight_decay, decay_mask)] if weight_decay else []
  if name == 'adamw':
    tx = optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay, mask=decay_mask)
  elif name == 'adam':
    tx = optax.chain(*l2, optax.adam(learning_rate, b1, b2))
  elif name == 'sgd':
    tx = optax.chain(*l2, optax.sgd(learning_rate, momentum or None,
                                    nesterov=nesterov and momentum > 0))
  else:
    raise ConfigError(f'unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}')
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx


def _scale_by_lr_multiplier(lr_multiplier):
  return optax.scale(lr_multiplier)


def with_lr_multiplier(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` followed by a scale whose value, 'lr_multiplier', lives in the optimiser state (so
  it is checkpointed). `set_lr_multiplier` changes it, e.g. to lower the learning rate
  after a rollback."""
  return optax.chain(tx, optax.inject_hyperparams(_scale_by_lr_multiplier)(lr_multiplier=1.0))


def lr_multiplier_value(opt_state) -> jax.Array:
  """The multiplier in an optimiser state (found by name), 1.0 if it has none; works under jit."""
  return jnp.asarray(optax.tree.get(opt_state, 'lr_multiplier', 1.0), jnp.float32)


def lr_multiplier(opt_state) -> float:
  return float(lr_multiplier_value(opt_state))


def set_lr_multiplier(opt_state, value: float):
  """The optimiser state of a `with_lr_multiplier` transformation, with the multiplier set."""
  return optax.tree.set(opt_state, lr_multiplier=jnp.asarray(value, jnp.float32))


def optimizer_from_config(config, total_steps: int, warmup_steps: int = 0):
  """(tx, schedule) from a config with name, learning_rate, schedule, weight_decay, momentum and
  clip_norm. tx carries an LR multiplier (`with_lr_multiplier`)."""
  schedule = make_schedule(config.schedule, config.learning_rate, total_steps, warmup_steps)
  tx = make_optimizer(config.name, schedule, weight_decay=config.get('weight_decay', 0.0),
                      momentum=config.get('momentum', 0.9), clip_norm=config.get('clip_norm'))
  return with_lr_multiplier(tx), schedule
