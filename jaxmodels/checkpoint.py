"""Checkpoints on orbax's CheckpointManager (`ocp.args` API). Every orbax call in
jaxmodels is in this module, so moving to another orbax API touches one file.

A checkpoint holds two items: 'state' (the TrainState pytree: step, params,
optimiser state, rng, model state) and 'meta' (JSON: the run's config and the
data position). Saves are asynchronous and atomic (orbax writes to a temporary
directory and renames it when complete); a non-finite state is never saved.
Restoring reshards onto the current mesh, whatever mesh wrote the checkpoint.
"""
import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from jaxmodels.errors import CheckpointError, NonFiniteError, Preempted
from jaxmodels.schema import flatten
from jaxmodels.train.callbacks import Callback
from jaxmodels.train.guards import PreemptionGuard


def config_differences(saved: Mapping, current: Mapping, resumable: Callable[[str], bool]):
  """'key: saved -> current' for every key that differs and may not change on resume."""
  as_list = lambda v: list(v) if isinstance(v, tuple) else v  # JSON has no tuples.
  saved = {k: as_list(v) for k, v in flatten(saved).items()}
  current = {k: as_list(v) for k, v in flatten(current).items()}
  keys = sorted(set(saved) | set(current))
  return [f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in keys
          if saved.get(k) != current.get(k) and not resumable(k)]


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def sync_processes(name: str) -> None:
  """A barrier across the processes of a multi-process run (nothing to wait for in one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """Saves and restores one run's checkpoints in `directory`.

  save_every_steps / save_every_seconds: when `should_save` says yes (either
  suffices; 0 turns one off). keep_last: the newest K are kept; keep_best:
  plus the best M by eval metric `best_metric` (`best_mode` 'max' or 'min').
  config: this run's config (a dict); restoring a checkpoint written under a
  different config is refused unless resume='force', except for the keys that
  `resumable(key)` allows to change (the schema's resume policy).
  """

  def __init__(self, directory: str, *, config: Mapping | None = None,
               resumable: Callable[[str], bool] = lambda key: False,
               save_every_steps: int = 0, save_every_seconds: float = 0,
               keep_last: int = 3, keep_best: int = 0, best_metric: str = 'accuracy',
               best_mode: str = 'max', async_save: bool = True, resume: str = 'auto'):
    if resume not in ('auto', 'force'):
      raise CheckpointError(f"resume must be 'auto' or 'force', got {resume!r}", key='resume')
    self.directory = os.path.abspath(directory)
    self.config, self.resume, self._resumable = dict(config or {}), resume, resumable
    self.save_every_steps = save_every_steps  # fit ends a dispatch at these steps.
    save_policies = [policies.PreemptionCheckpointingPolicy()]
    if save_every_steps:
      save_policies.append(policies.FixedIntervalPolicy(save_every_steps))
    if save_every_seconds:
      save_policies.append(policies.ContinuousCheckpointingPolicy(
          minimum_interval_secs=int(save_every_seconds)))
    keep = [policies.LatestN(keep_last)]
    if keep_best:
      keep.append(policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                 reverse=best_mode == 'min', n=keep_best,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy(save_policies),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._options = options
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    # Handlers named up front, so that metadata of existing checkpoints can be read.
    return ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  @property
  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept checkpoint with the best metric (keep_best), or None."""
    return self._manager.best_step()

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(self, step: int, state, *, meta: Mapping | None = None,
           metrics: Mapping | None = None, force: bool = False) -> bool:
    """Saves (asynchronously) if the policy says so or `force`; returns whether it did.

    Raises NonFiniteError instead of writing a state with NaN/inf in it.
    """
    if not (force or self.should_save(step)) or step in self.steps:
      return False
    if not bool(_all_finite(state)):
      raise NonFiniteError(f'the state has NaN/inf values at step {step}; it was not saved '
                           f'(the last good checkpoint is step {self.latest_step()})', step)
    meta = {'config': self.config, **(meta or {})}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
    return self._manager.save(step, args=args, metrics=metrics, force=True)

  def reached_preemption(self, step: int) -> bool:
    """True on every process at the same step once any got a preemption notice (multi-host)."""
    return jax.process_count() > 1 and self._manager.reached_preemption(step)

  def wait(self):
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def _check_shapes(self, step, abstract_state):
    saved = self.saved_shapes(step)
    # Orbax stores dataclasses and tuples as dicts and lists: compare by path string.
    name_of = lambda path: jax.tree_util.keystr(path, simple=True, separator='/')
    flat_saved = {name_of(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
        saved, is_leaf=lambda x: hasattr(x, 'shape'))[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
      name = name_of(path)
      there = flat_saved.get(name)
      if there is None:
        raise CheckpointError(f'checkpoint step {step} in {self.directory} has no {name}: it '
                              'belongs to another model; use another workdir, or init_from',
                              key='workdir')
      if tuple(there.shape) != tuple(leaf.shape):
        raise CheckpointError(
            f'checkpoint step {step} in {self.directory} is from a different model: {name} is '
            f'{tuple(there.shape)} there, {tuple(leaf.shape)} here; use another workdir',
            key='workdir')

  def _restore_step(self, step, abstract_state):
    self._check_shapes(step, abstract_state)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              meta=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored['state'], dict(restored['meta'] or {})

  def restore(self, abstract_state, step: int | None = None):
    """(state, meta) of `step` (default: the newest readable), or None without checkpoints.

    abstract_state: ShapeDtypeStructs with the *current* shardings (see
    `restore_or_init`). An unreadable checkpoint is moved to
    `unreadable-<step>` (nothing is deleted) and the previous one is tried.
    """
    candidates = [step] if step is not None else sorted(self.steps, reverse=True)
    for candidate in candidates:
      try:
        state, meta = self._restore_step(candidate, abstract_state)
      except CheckpointError:
        raise
      except Exception as e:  # Truncated files, bad JSON, tensorstore errors, ...
        moved = self._set_aside(candidate)
        logging.warning('checkpoint step %d is unreadable (%s: %s); moved it to %s and falling '
                        'back to the previous one', candidate, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else '', moved)
        if jax.process_index() == 0:
          print(f'warning: checkpoint step {candidate} in {self.directory} is unreadable; '
                f'moved it to {moved}, falling back to the previous checkpoint')
        continue
      self._check_config(candidate, meta.get('config', {}))
      return state, meta
    if candidates:
      raise CheckpointError(f'no readable checkpoint in {self.directory} (unreadable ones were '
                            'moved to unreadable-<step>); use another workdir to start afresh',
                            key='workdir')
    return None

  def _check_config(self, step, saved_config):
    differences = (config_differences(saved_config, self.config, self._resumable)
                   if self.config else [])
    if differences and self.resume != 'force':
      raise CheckpointError(
          f'{self.directory} holds checkpoints (step {step}) of a run with another config '
          f'({"; ".join(differences[:3])}): use another workdir, or resume=force to continue '
          'from them anyway', key='workdir')

  def _set_aside(self, step) -> str:
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, f'unreadable-{step}')
    if jax.process_index() == 0 and os.path.exists(source):
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.directory, f'unreadable-{step}.{suffix}')
      os.rename(source, target)
    sync_processes(f'jaxmodels: checkpoint {step} set aside')  # Before anyone reopens.
    self._manager = self._open()
    return target

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the params of a checkpoint (fine-tuning: `init_from`), onto the current shardings."""
    return self.restore_parts({'params': abstract_params}, step)['params']

  def restore_parts(self, abstract_parts: Mapping, step: int | None = None) -> dict:
    """Some top-level parts of a checkpoint's state ({'params': ..., 'model_state': ...} as
    ShapeDtypeStructs with shardings), read alone: nothing else is loaded."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory} to read', key='init_from')
    self._check_shapes(step, abstract_parts)
    # A read-only PyTree view of the same files: it can restore a subtree of 'state'.
    reader = ocp.CheckpointManager(self.directory,
                                   options=ocp.CheckpointManagerOptions(
                                       read_only=True, save_interval_steps=0, create=False),
                                   item_handlers={'state': ocp.PyTreeCheckpointHandler()})
    target = {k: v for k, v in abstract_parts.items() if jax.tree.leaves(v)}
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
    restored = reader.restore(step, args=args)['state']
    return {k: restored.get(k, v) for k, v in abstract_parts.items()}

  def saved_shapes(self, step: int) -> dict:
    """The saved state's tree of array metadata (shape, dtype) at `step`."""
    saved = self._manager.item_metadata(step)['state']
    return getattr(saved, 'tree', saved)


def read_variables(directory: str, step: int | None = None) -> dict:
  """{'params': ..., **model_state} of a checkpoint as host numpy arrays, whatever model or
  mesh wrote them: the variables `module.apply` takes (for export, serving, inspection)."""
  checkpointer = Checkpointer(directory)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {directory}', key='workdir')
  saved = checkpointer.saved_shapes(step)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                          {'params': saved['params'], 'model_state': saved.get('model_state', {})},
                          is_leaf=lambda x: hasattr(x, 'shape'))
  parts = jax.device_get(checkpointer.restore_parts(abstract, step))
  return {'params': parts['params'], **parts['model_state']}


def read_meta(directory: str, step: int | None = None) -> dict:
  """The JSON saved beside a checkpoint's state (the run's config, its data position): what
  rebuilds a finished run's data (export measures the test accuracy with it)."""
  reader = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False),
                                 item_handlers={'meta': ocp.JsonCheckpointHandler()})
  step = reader.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'no checkpoint in {directory}', key='workdir')
  return dict(reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])


def read_params(directory: str, step: int | None = None):
  """The params of a checkpoint as host numpy arrays, whatever model or mesh wrote them
  (for inspection, export and tests)."""
  return read_variables(directory, step)['params']


def restore_or_init(checkpointer: Checkpointer | None, init_fn: Callable, rng: jax.Array,
                    shardings=None):
  """(state, meta): the newest checkpoint restored onto `shardings`, or `init_fn(rng)` fresh.

  shardings: NamedShardings for the state on the current mesh (from
  `parallel.sharding_rules`); None keeps jit's default placement. meta is None
  for a fresh state.
  """
  abstract = jax.eval_shape(init_fn, rng)
  if shardings is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
  if checkpointer is not None and checkpointer.steps:
    restored = checkpointer.restore(abstract)
    if restored is not None:
      return restored
  init = jax.jit(init_fn, out_shardings=shardings) if shardings is not None else jax.jit(init_fn)
  return init(rng), None


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')




class Checkpoint(Callback):
  """Saves through `checkpointer` during `fit`: every `checkpointer.save_every_steps` steps (or
  as its time policy says), after each evaluation (with its metrics, for keep-best), at
  the end, when a callback stops training (meta 'stopped_early'), and on SIGTERM /
  SIGINT or a pod preemption notice, after which it raises `Preempted`. Saves still in
  flight reach the disk before fit returns or raises."""
  order = 1  # Last: after evaluation and early stopping have spoken for this step.

  def __init__(self, checkpointer: Checkpointer):
    self.checkpointer, self.every_steps = checkpointer, checkpointer.save_every_steps
    self._guard, self._eval = None, (None, None)

  def on_fit_start(self, loop, state):
    self._loop, self._guard = loop, PreemptionGuard().__enter__()

  def on_eval_end(self, step, logs, state):
    self._eval = (step, logs)

  def on_steps_end(self, step, state):
    preempted = self._guard.requested or self.checkpointer.reached_preemption(step)
    stopped = self._loop.stop_requested
    evaluated = self._eval[0] == step
    if (preempted or stopped or evaluated or step == self._loop.total_steps or
        self.checkpointer.should_save(step)):
      self.checkpointer.save(step, state, meta={**self._loop.position(step),
                                                'stopped_early': stopped},
                             metrics=self._eval[1] if evaluated else None, force=True)
    if preempted:
      raise Preempted(step)

  def on_fit_exit(self):
    if self._guard is not None:
      self._guard.__exit__(None, None, None)
    self.checkpointer.wait()
