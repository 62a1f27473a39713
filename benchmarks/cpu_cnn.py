"""The seed CNN (conv32 3x3 -> max-pool 2 -> dense128 -> 10) on Fashion-MNIST, on the CPU:
jaxmodels against Keras/TF, PyTorch and a plain hand-written Flax + optax jit loop.

  pip install -r benchmarks/requirements.txt   # the reference frameworks
  python benchmarks/cpu_cnn.py                 # every figure (about 15 minutes on 2 cores)
  python benchmarks/cpu_cnn.py --only throughput --batch_sizes 64
  python benchmarks/cpu_cnn.py --quick         # a few steps of each part: checks that it runs

Parts (--only, comma-separated):
  throughput  training images/s at each batch size: every framework trains the same model
              with Adam on the same float32 images; its first steps (compilation,
              warm-up) are left out. Ratios are jaxmodels / reference (P1: vs Keras).
  overhead    the jaxmodels train step, jit(make_train_step(...)), against a plain
              hand-written jit step: same model, same device-resident batch (P3).
  startup     process start -> first training step done (import, data, init, compile),
              cold (empty compilation cache) and cached (P4).
  accuracy    `experiments/fashion_mnist.py --config=...:fast` end to end: process start
              to the last metric, and its test accuracy (P2).
  profile     microseconds per image of each piece of the step at each batch size.
  gemm        the dense layer's three float32 matrix products (forward, weight and input
              gradients, 5408x128) as XLA:CPU runs them, beside PyTorch (oneDNN, as
              Keras/TF uses) and numpy on the same shapes and cores.
  user        the user's protocol: whole epochs of `fit` (compilation included) with the
              library's SmallCNN and with the user's own CNN written with Flax's
              nn.max_pool, beside Keras `model.fit`: the first epoch (compile and warm-up
              included) and the steady state (the later epochs), as ratios (U1, U2); the
              median of --rounds rounds, each contender once per round, from cold.

Data: the Debian dataset-fashion-mnist files, or any local copy jaxmodels finds
(see jaxmodels.data.local). A framework that is not installed is reported as
skipped in the table, not dropped.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRAMEWORKS = ('jaxmodels', 'keras', 'pytorch', 'plain_jit')
TARGETS = dict(P1=1.5, P2_seconds=90.0, P2_accuracy=0.925, P3=1.05, P4_cold=5.0, P4_cached=2.0,
               U1_steady=1.5, U1_first=1.2, U2=1.2)


def cpu_model() -> str:
  """The CPU's model name (ratios move with it: compare figures of one machine only)."""
  for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
    if line.startswith('model name'):
      return line.split(':', 1)[1].strip()
  import platform
  return platform.processor() or platform.machine()


def load_fashion_mnist():
  """(train_x, train_y, test_x, test_y): float32 NHWC images in [0, 1], int32 labels."""
  from jaxmodels.data import load_dataset
  data = load_dataset('fashion_mnist', source='local')
  scale = lambda images: images.astype(np.float32) / 255.0
  return scale(data.train_images), data.train_labels, scale(data.test_images), data.test_labels


# ------------------------------------------------------------------------------ frameworks
# Each trains for `warmup + steps` steps of `batch_size` and returns images/s over the last
# `steps` (after compilation and warm-up), reshuffling the data every epoch.


def run_jaxmodels(x, y, batch_size, steps, warmup):
  """jaxmodels' normal path: `fit` with its defaults (device-resident data, several steps per
  dispatch, a host sync only at logging), the library's train step and SmallCNN."""
  import jax
  import optax

  import jaxmodels as jm
  from jaxmodels.models import SmallCNN

  model = jm.linen_model(SmallCNN())
  tx = optax.adam(1e-3)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), x[:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                            jm.classification_metrics(10))  # Slices of 64 past 128: automatic.
  spd = jm.train.auto_steps_per_dispatch(batch_size, jm.parallel.single_device_mesh())
  warmup = -(-warmup // spd) * spd
  _, history = jm.fit(state, step, (x, y), batch_size=batch_size, num_steps=warmup + steps,
                      log_every_steps=warmup, progress=False)
  # One row per host sync, each with the rate of its interval; the first is the warm-up.
  rows = history.train[1:]
  sizes = np.diff([history.train[0]['step']] + [r['step'] for r in rows]) * batch_size
  seconds = sum(n / r['examples_per_sec'] for n, r in zip(sizes, rows))
  return float(np.sum(sizes) / seconds)


def run_keras(x, y, batch_size, steps, warmup):
  """The model as the Keras docs write it, trained with `model.fit`."""
  import os
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras

  model = keras.Sequential([
      keras.Input(shape=(28, 28, 1)),
      keras.layers.Conv2D(32, 3, activation='relu'),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(128, activation='relu'),
      keras.layers.Dense(10),
  ])
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  model.fit(x[:warmup * batch_size], y[:warmup * batch_size], batch_size=batch_size, epochs=1,
            verbose=0)
  n = steps * batch_size
  reps = -(-n // len(x))  # Whole passes over the data when `steps` spans several epochs.
  images = np.concatenate([x] * reps)[:n]
  labels = np.concatenate([y] * reps)[:n]
  start = time.perf_counter()
  model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
  return n / (time.perf_counter() - start)


def run_pytorch(x, y, batch_size, steps, warmup):
  """The same model in PyTorch, eager, on the CPU; a standard training loop."""
  import torch

  torch.manual_seed(0)
  model = torch.nn.Sequential(
      torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
      torch.nn.Linear(13 * 13 * 32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NCHW
  labels = torch.from_numpy(y.astype(np.int64))
  per_epoch = len(x) // batch_size

  def train(num_steps, first):
    for i in range(first, first + num_steps):
      if i % per_epoch == 0 or i == first:
        order = torch.randperm(len(x))
      index = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
      optimizer.zero_grad()
      loss = loss_fn(model(images[index]), labels[index])
      loss.backward()
      optimizer.step()
    return loss.item()

  train(warmup, 0)
  start = time.perf_counter()
  train(steps, warmup)
  return steps * batch_size / (time.perf_counter() - start)


def _plain_flax_model():
  """The seed CNN as the Flax tutorials write it (nn.max_pool, not jaxmodels' layers)."""
  import flax.linen as nn

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
      x = nn.relu(nn.Conv(32, (3, 3), padding='VALID')(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = x.reshape((x.shape[0], -1))
      x = nn.relu(nn.Dense(128)(x))
      return nn.Dense(10)(x)

  return CNN()


def _plain_step(apply_fn):
  """A hand-written Flax + optax train step (flax.training.train_state), jitted."""
  import jax
  import optax

  @jax.jit
  def train_step(state, images, labels):
    def loss_fn(params):
      logits = apply_fn({'params': params}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  return train_step


def run_plain_jit(x, y, batch_size, steps, warmup):
  """The plain hand-written jit loop of the Flax tutorials: a numpy batch per step."""
  import jax
  import optax
  from flax.training import train_state

  model = _plain_flax_model()
  params = model.init(jax.random.PRNGKey(0), x[:1])['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.adam(1e-3))
  train_step = _plain_step(model.apply)
  per_epoch = len(x) // batch_size
  rng = np.random.default_rng(0)

  def train(state, num_steps, first):
    for i in range(first, first + num_steps):
      if i % per_epoch == 0 or i == first:
        order = rng.permutation(len(x))
      index = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
      state, loss = train_step(state, x[index], y[index])
    loss.block_until_ready()
    return state

  state = train(state, warmup, 0)
  start = time.perf_counter()
  train(state, steps, warmup)
  return steps * batch_size / (time.perf_counter() - start)


RUNNERS = dict(jaxmodels=run_jaxmodels, keras=run_keras, pytorch=run_pytorch,
               plain_jit=run_plain_jit)


def throughput(args, data):
  x, y = data[0], data[1]
  results = {}
  for batch_size in args.batch_sizes:
    steps = args.steps or max(args.images // batch_size, 1)
    warmup = args.warmup or max(4, 2048 // batch_size)
    row = {}
    for name in args.frameworks:
      try:
        row[name] = RUNNERS[name](x, y, batch_size, steps, warmup)
      except ImportError as e:
        row[name] = None
        print(f'  {name}: skipped ({e}); pip install -r benchmarks/requirements.txt',
              flush=True)
      else:
        print(f'  bs {batch_size:4d}  {name:10s} {row[name]:9.0f} img/s', flush=True)
    results[batch_size] = row
  print(f'\nthroughput (training images/s; {args.images} images per framework after warm-up)')
  references = [n for n in args.frameworks if n != 'jaxmodels']
  print(f'{"batch":>6} ' + ' '.join(f'{n:>11}' for n in args.frameworks) + ' ' +
        ' '.join(f'{"vs " + n:>13}' for n in references))
  for batch_size, row in results.items():
    rates = ' '.join(f'{row[n]:11.0f}' if row[n] else f'{"skipped":>11}' for n in args.frameworks)
    ours = row.get('jaxmodels')
    ratios = ' '.join(f'{ours / row[n]:12.2f}x' if ours and row[n] else f'{"-":>13}'
                      for n in references)
    print(f'{batch_size:>6} {rates} {ratios}')
    if ours and row.get('keras'):
      verdict = 'met' if ours / row['keras'] >= TARGETS['P1'] else 'MISSED'
      print(f'       P1 (>= {TARGETS["P1"]}x Keras at bs {batch_size}): {ours / row["keras"]:.2f}x '
            f'{verdict}')
  return {str(b): r for b, r in results.items()}


def overhead(args, data):
  """Seconds per step of jit(jaxmodels step) / jit(plain step) on the same model and batch."""
  import jax
  import optax
  from flax.training import train_state

  import jaxmodels as jm
  from jaxmodels.models import SmallCNN

  x, y = data[0], data[1]
  results = {}
  for batch_size in args.batch_sizes:
    module = SmallCNN()
    images, labels = jax.device_put(x[:batch_size]), jax.device_put(y[:batch_size])
    tx = optax.adam(1e-3)
    params = module.init(jax.random.PRNGKey(0), images[:1])['params']
    plain_state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    plain = _plain_step(module.apply)
    model = jm.linen_model(module)
    ours_state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1])
    ours = jax.jit(jm.train.cpu_path.tuned(jm.make_train_step(  # As fit runs it.
        model.apply, jm.classification_loss(), tx, jm.classification_metrics(10))),
        donate_argnums=0)
    batch = {'inputs': images, 'labels': labels}
    steps = args.overhead_steps

    def time_plain(state, steps=steps, plain=plain, images=images, labels=labels):
      for _ in range(steps):
        state, loss = plain(state, images, labels)
      loss.block_until_ready()
      return state

    def time_ours(state, steps=steps, ours=ours, batch=batch):
      for _ in range(steps):
        state, metrics = ours(state, batch)
      jax.block_until_ready(metrics)
      return state

    plain_state, ours_state = time_plain(plain_state), time_ours(ours_state)  # Compile, warm.
    plain_times, ours_times = [], []
    for _ in range(args.repeats):  # Interleaved, so drift in the machine hits both alike.
      start = time.perf_counter()
      plain_state = time_plain(plain_state)
      plain_times.append((time.perf_counter() - start) / steps)
      start = time.perf_counter()
      ours_state = time_ours(ours_state)
      ours_times.append((time.perf_counter() - start) / steps)
    plain_s, ours_s = min(plain_times), min(ours_times)
    ratio = ours_s / plain_s
    verdict = 'met' if ratio <= TARGETS['P3'] else 'MISSED'
    print(f'  bs {batch_size:4d}: jaxmodels step {ours_s * 1e3:.3f} ms, plain jit step '
          f'{plain_s * 1e3:.3f} ms: {ratio:.3f}x  (P3 <= {TARGETS["P3"]}x: {verdict})', flush=True)
    results[str(batch_size)] = dict(jaxmodels_ms=ours_s * 1e3, plain_ms=plain_s * 1e3,
                                    ratio=ratio)
  return results


STARTUP_CHILD = r'''
import sys, time
import jax, optax
import jaxmodels as jm
from jaxmodels.models import SmallCNN
jm.enable_compilation_cache(sys.argv[1])
data = jm.load_dataset('fashion_mnist', source='local')
model = jm.linen_model(SmallCNN())
tx = optax.adam(1e-3)
state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), data.train_images[:1] / 255.0)
scale = lambda rng, batch: {**batch, 'inputs': batch['inputs'] / 255.0}
step = jm.with_preprocess(jm.make_train_step(model.apply, jm.classification_loss(), tx), scale)
batch = {'inputs': data.train_images[:64], 'labels': data.train_labels[:64]}
state, metrics = jax.jit(jm.train.cpu_path.tuned(step))(state, batch)  # As fit runs it.
jax.block_until_ready(metrics)
print(time.time())
'''


def startup(args, data):
  """Wall seconds from process start to the first step's result, cold and cached."""
  results = {}
  with tempfile.TemporaryDirectory() as cache:
    # Cold: no compiled programs and no decoded data files yet; cached: both from the first.
    env = {**os.environ, 'JAXMODELS_DATA_CACHE': os.path.join(cache, 'decoded')}
    for label in ('cold', 'cached'):
      start = time.time()
      out = subprocess.run([sys.executable, '-c', STARTUP_CHILD, cache], capture_output=True,
                           text=True, check=True, cwd=ROOT, env=env)
      results[label] = float(out.stdout.split()[-1]) - start
      target = TARGETS[f'P4_{label}']
      verdict = 'met' if results[label] <= target else 'MISSED'
      print(f'  {label:6s}: first step {results[label]:.2f} s after process start '
            f'(P4 <= {target} s: {verdict})', flush=True)
  return results


def accuracy(args, data):
  """The fast Fashion-MNIST recipe end to end; wall time from process start to exit."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, 'experiments/fashion_mnist.py',
               '--config=experiments/configs/fashion_mnist.py:fast', f'--workdir={workdir}',
               '--config.train.progress=False', '--compilation_cache=off', *args.accuracy_flags]
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - start
    summary = json.loads(pathlib.Path(workdir, 'summary.json').read_text())
  acc = summary['test']['accuracy']
  met = acc >= TARGETS['P2_accuracy'] and seconds <= TARGETS['P2_seconds']
  print(f'  test accuracy {acc:.4f} in {seconds:.1f} s end to end (cold compile) '
        f'(P2 >= {TARGETS["P2_accuracy"]} in <= {TARGETS["P2_seconds"]:.0f} s: '
        f'{"met" if met else "MISSED"})\n  command: {" ".join(command[1:])}', flush=True)
  return dict(test_accuracy=acc, seconds=seconds)


def profile(args, data):
  """Microseconds per image of each piece of the seed CNN's step, at each batch size: where
  XLA:CPU spends the step, and how each piece scales with the batch (cache effects)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jaxmodels.models.layers import conv_few_inputs, max_pool

  def per_image_us(fn, *inputs, batch_size):
    jax.block_until_ready(fn(*inputs))
    start = time.perf_counter()
    for _ in range(args.overhead_steps):
      out = fn(*inputs)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / args.overhead_steps / batch_size * 1e6

  conv = lambda kernel, x: jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  flax_pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
  results = {}
  for batch_size in args.batch_sizes:
    x = jnp.asarray(data[0][:batch_size])
    kernel = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 1, 32)) * 0.3
    y = conv(kernel, x)
    hidden = jax.random.normal(jax.random.PRNGKey(1), (batch_size, 13 * 13 * 32))
    dense = jax.random.normal(jax.random.PRNGKey(2), (13 * 13 * 32, 128)) * 0.01
    pieces = {
        'conv forward': (jax.jit(conv), kernel, x),
        'conv kernel gradient': (jax.jit(jax.grad(lambda k, x: jnp.sum(conv(k, x)))), kernel, x),
        'conv_few_inputs forward': (jax.jit(lambda k, x: conv_few_inputs(x, k)), kernel, x),
        'conv_few_inputs kernel gradient': (jax.jit(jax.grad(
            lambda k, x: jnp.sum(conv_few_inputs(x, k)))), kernel, x),
        'relu + nn.max_pool gradient': (jax.jit(jax.grad(lambda y: jnp.sum(flax_pool(
            nn.relu(y))))), y),
        'layers.max_pool + relu gradient': (jax.jit(jax.grad(lambda y: jnp.sum(nn.relu(
            max_pool(y, 2))))), y),
        'dense 5408x128 gradients': (jax.jit(jax.grad(lambda w, h: jnp.sum(jnp.tanh(h @ w)),
                                                      argnums=(0, 1))), dense, hidden),
    }
    row = {name: per_image_us(fn, *inputs, batch_size=batch_size)
           for name, (fn, *inputs) in pieces.items()}
    results[str(batch_size)] = row
  print(f'{"us per image":32s}' + ''.join(f'{"bs " + b:>10}' for b in results))
  for name in next(iter(results.values())):
    print(f'{name:32s}' + ''.join(f'{results[b][name]:10.1f}' for b in results))
  return results


# name: (product, its operands among h (B x 5408), w (5408 x 128), g (B x 128)).
GEMM_PRODUCTS = {'forward h @ w': (lambda a, b: a @ b, 'hw'),
                 'weight gradient h.T @ g': (lambda a, b: a.T @ b, 'hg'),
                 'input gradient g @ w.T': (lambda a, b: a @ b.T, 'gw')}


def gemm_times(library: str, batch_size: int, steps: int, repeats: int) -> list[float]:
  """Microseconds per product (GEMM_PRODUCTS, in order) of the dense layer's shapes with
  `library`: the median of `repeats` timings of `steps` products, after 20 untimed ones."""
  if library == 'jax':
    import jax
    import jax.numpy as jnp
    convert, wrap, sync = jnp.asarray, jax.jit, jax.block_until_ready
  elif library == 'pytorch':
    import torch
    convert, wrap, sync = torch.from_numpy, (lambda f: f), (lambda x: x)
  else:
    convert, wrap, sync = np.asarray, (lambda f: f), (lambda x: x)
  rng = np.random.default_rng(0)
  operands = {name: convert(rng.standard_normal(shape, np.float32)) for name, shape in
              (('h', (batch_size, 13 * 13 * 32)), ('w', (13 * 13 * 32, 128)),
               ('g', (batch_size, 128)))}
  products = [(wrap(product), *(operands[name] for name in names))
              for product, names in GEMM_PRODUCTS.values()]
  figures = []
  for product, a, b in products:
    for _ in range(20):  # Compilation, and the library's thread pool starting.
      sync(product(a, b))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        out = product(a, b)
      sync(out)
      times.append((time.perf_counter() - start) / steps * 1e6)
    figures.append(float(np.median(times)))
  return figures


def gemm(args, data):
  """The SmallCNN's dense layer (B x 5408 @ 5408 x 128) as three float32 matrix products,
  jax.jit on XLA:CPU against PyTorch (oneDNN, the library Keras/TF also calls) and numpy
  (OpenBLAS), each library in its own process: their thread pools, left spinning, would
  otherwise slow each other. A batch that `fit` accumulates over slices is multiplied in
  slices, so the products take a slice's rows. Where the product library is the gap, no
  change to jaxmodels' own code closes it."""
  from jaxmodels.train import cpu_path
  from jaxmodels.train.step import micro_batch_count
  del data
  results = {}
  for batch_size in args.batch_sizes:
    rows = batch_size // micro_batch_count(batch_size, cpu_path.execution().slice_sizes, {})
    row = {}
    for library in ('jax', 'numpy', 'pytorch'):
      command = [sys.executable, __file__, '--gemm_worker', library, '--batch_sizes',
                 str(rows), '--overhead_steps', str(args.overhead_steps),
                 '--repeats', str(args.repeats)]
      done = subprocess.run(command, capture_output=True, text=True)
      if done.returncode:
        print(f'  bs {batch_size:4d} {library}: skipped ({done.stderr.strip().splitlines()[-1]})',
              flush=True)
        continue
      row[library] = json.loads(done.stdout.strip().splitlines()[-1])
    for i, name in enumerate(GEMM_PRODUCTS):
      times = {library: figures[i] for library, figures in row.items()}
      results[f'{batch_size} {name}'] = times
      others = ', '.join(f'{library} {t:6.0f} us (jax takes {times["jax"] / t:.2f}x)'
                         for library, t in times.items() if library != 'jax')
      print(f'  bs {batch_size:4d} {name:24s} ({rows:3d} rows) jax {times["jax"]:6.0f} us; '
            f'{others}', flush=True)
  return results


def _epoch_times(fit_epochs):
  """Seconds of each epoch from `fit_epochs(on_epoch_end)`, the first from the call's start."""
  ends = []
  start = time.perf_counter()
  fit_epochs(lambda: ends.append(time.perf_counter()))
  return list(np.diff([start] + ends))


def _fit_epochs_jaxmodels(module, x, y, batch_size, epochs):
  import jax
  import optax

  import jaxmodels as jm

  def fit_epochs(on_epoch_end):
    model = jm.linen_model(module)
    tx = optax.adam(1e-3)
    state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), x[:1])
    step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                              jm.classification_metrics(10))
    timer = jm.LambdaCallback(on_fit_start=lambda loop, state: setattr(
        timer, 'every_steps', loop.steps_per_epoch))
    timer.on_steps_end = lambda step, state: (
        step % timer.every_steps == 0 and on_epoch_end())  # fit syncs before this call.
    jm.fit(state, step, (x, y), batch_size=batch_size, num_epochs=epochs, callbacks=[timer],
           log_every_steps=10**9, progress=False)  # Defaults otherwise, as a user writes it.

  return fit_epochs


def _fit_epochs_keras(x, y, batch_size, epochs):
  import os
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras

  def fit_epochs(on_epoch_end):
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)), keras.layers.Conv2D(32, 3, activation='relu'),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(128, activation='relu'), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end())
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[callback])

  return fit_epochs


def user_protocol(args, data):
  """Whole epochs through the public APIs, as a user trains: compile and warm-up included in
  the first epoch; the steady state is the mean of the later ones. Each round runs every
  contender once, in a rotated order, from cold (`jax.clear_caches()`); the figures are the
  medians over rounds, with the range beside them, and the ratios are ratios of medians."""
  import jax

  from jaxmodels.models import SmallCNN
  x, y = data[0][:args.epoch_images], data[1][:args.epoch_images]
  contenders = {'jaxmodels SmallCNN': lambda b: _fit_epochs_jaxmodels(SmallCNN(), x, y, b,
                                                                      args.epochs),
                'user nn.max_pool CNN': lambda b: _fit_epochs_jaxmodels(_plain_flax_model(), x,
                                                                        y, b, args.epochs),
                'keras': lambda b: _fit_epochs_keras(x, y, b, args.epochs)}
  results = {}
  for batch_size in args.batch_sizes:
    per_epoch = len(x) // batch_size * batch_size
    rates = {name: {'first': [], 'steady': []} for name in contenders}
    skipped = set()
    for round_index in range(args.rounds):
      names = list(contenders)
      names = names[round_index % len(names):] + names[:round_index % len(names)]
      for name in names:
        if name in skipped:
          continue
        if name != 'keras':
          jax.clear_caches()  # Every round compiles from nothing, as a new process would.
        try:
          seconds = _epoch_times(contenders[name](batch_size))
        except ImportError as e:
          print(f'  {name}: skipped ({e})', flush=True)
          skipped.add(name)
          continue
        rates[name]['first'].append(per_epoch / seconds[0])
        rates[name]['steady'].append(per_epoch / float(np.mean(seconds[1:] or seconds)))
    row = {}
    for name, figures in rates.items():
      if not figures['first']:
        continue
      row[name] = {k: float(np.median(v)) for k, v in figures.items()}
      row[name]['rounds'] = figures
      first, steady = (f'{min(figures[k]):.0f}-{max(figures[k]):.0f}' for k in figures)
      print(f'  bs {batch_size:4d}  {name:22s} first epoch {row[name]["first"]:7.0f} img/s '
            f'({first}), steady {row[name]["steady"]:7.0f} img/s ({steady})', flush=True)
    results[str(batch_size)] = row
    keras_row = row.get('keras')
    for name in ('jaxmodels SmallCNN', 'user nn.max_pool CNN'):
      if keras_row and name in row:
        first, steady = (row[name][k] / keras_row[k] for k in ('first', 'steady'))
        print(f'  bs {batch_size:4d}  {name:22s} vs Keras: first epoch {first:.2f}x, steady '
              f'{steady:.2f}x', flush=True)
  return results


PARTS = dict(throughput=throughput, overhead=overhead, startup=startup, accuracy=accuracy,
             profile=profile, gemm=gemm, user=user_protocol)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('--only', default=','.join(PARTS), help='parts to run, comma-separated')
  parser.add_argument('--frameworks', default=','.join(FRAMEWORKS),
                      help='for throughput, comma-separated')
  parser.add_argument('--batch_sizes', default='64,512', help='comma-separated')
  parser.add_argument('--images', type=int, default=30720,
                      help='timed training images per framework and batch size')
  parser.add_argument('--steps', type=int, default=0, help='timed steps (overrides --images)')
  parser.add_argument('--warmup', type=int, default=0, help='untimed first steps')
  parser.add_argument('--overhead_steps', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--quick', action='store_true',
                      help='a few steps of each part, and a 1-epoch accuracy run')
  parser.add_argument('--epochs', type=int, default=3, help='epochs of the user protocol')
  parser.add_argument('--epoch_images', type=int, default=60000,
                      help='training images per epoch of the user protocol')
  parser.add_argument('--rounds', type=int, default=3,
                      help='rounds of the user protocol (medians over rounds are reported)')
  parser.add_argument('--json', help='also write the figures to this file')
  parser.add_argument('--gemm_worker', help=argparse.SUPPRESS)  # One library's gemm figures.
  args = parser.parse_args()
  args.parts = [p for p in args.only.split(',') if p]
  args.frameworks = [f for f in args.frameworks.split(',') if f]
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  if args.gemm_worker:
    print(json.dumps(gemm_times(args.gemm_worker, args.batch_sizes[0], args.overhead_steps,
                                args.repeats)))
    return
  for name in args.parts:
    if name not in PARTS:
      parser.error(f'unknown part {name!r}; choose from {", ".join(PARTS)}')
  for name in args.frameworks:
    if name not in RUNNERS:
      parser.error(f'unknown framework {name!r}; choose from {", ".join(RUNNERS)}')
  args.accuracy_flags = []
  if args.quick:
    args.steps, args.warmup, args.overhead_steps, args.repeats = 4, 2, 3, 1
    args.epochs, args.epoch_images, args.rounds = 2, 1024, 1
    args.accuracy_flags = ['--config.train.num_epochs=1']

  data = load_fashion_mnist()
  print(f'CPU: {cpu_model()}; {os.cpu_count()} cores', flush=True)
  figures = {'cpu': cpu_model()}
  for name in args.parts:
    print(f'== {name}', flush=True)
    figures[name] = PARTS[name](args, data)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == '__main__':
  main()
