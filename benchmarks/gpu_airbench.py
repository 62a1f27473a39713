"""An airbench-style CIFAR-10 net: training-step and TTA-eval throughput on synthetic
CIFAR-shaped data, jaxmodels against the same net in PyTorch on the same GPU in the same run.

  python benchmarks/gpu_airbench.py                  # batch 1024, bf16, 50 timed steps
  python benchmarks/gpu_airbench.py --quick          # tiny widths, 3 steps (any backend)

The net (after Keller Jordan's airbench94): a fixed 2x2 patch-whitening conv
computed from the data, then three blocks of conv3x3 -> max-pool -> batch-norm ->
GELU -> conv3x3 -> batch-norm -> GELU (widths 64, 256, 256), a global max-pool
and a scaled linear head. Training: label smoothing 0.2, Nesterov SGD with weight
decay, random flip and 2-pixel translate augmentation on the device. Eval: test-time
augmentation (the mean of the image's and its mirror's logits).

jaxmodels' side needs only jax, flax, optax and numpy. The PyTorch side runs when torch
with a GPU (or --torch_cpu) is present, and is reported as skipped otherwise.
"""
import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.data.augment import make_augment
from jaxmodels.models.layers import max_pool
from jaxmodels.train.losses import classification_loss
from jaxmodels.train.model import linen_model
from jaxmodels.train.state import create_train_state
from jaxmodels.train.step import make_train_step, with_preprocess

WIDTHS = (64, 256, 256)
LABEL_SMOOTHING = 0.2


def whitening_kernel(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
  """(2, 2, 3, 24) conv kernel: the 2x2 patches' covariance eigenvectors scaled by
  1/sqrt(eigenvalue), and their negatives (airbench's whitening layer)."""
  patches = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
  patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches, rowvar=False))
  kernel = (eigenvectors / np.sqrt(eigenvalues + eps)).T.reshape(12, 2, 2, 3)
  kernel = np.concatenate([kernel, -kernel]).transpose(1, 2, 3, 0)
  return kernel.astype(np.float32)


class ConvGroup(nn.Module):
  width: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.6, epsilon=1e-12,
                                dtype=self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.gelu(norm()(max_pool(x, 2)))
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    return nn.gelu(norm()(x))


class AirbenchNet(nn.Module):
  whiten: np.ndarray            # (2, 2, 3, 24), fixed: computed from the training images.
  widths: tuple = WIDTHS
  num_classes: int = 10
  dtype: jnp.dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = jax.lax.conv_general_dilated(x.astype(self.dtype), jnp.asarray(self.whiten, self.dtype),
                                     (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = nn.gelu(x + self.param('whiten_bias', nn.initializers.zeros, (x.shape[-1],), self.dtype))
    for i, width in enumerate(self.widths):
      x = ConvGroup(width, self.dtype, name=f'group{i}')(x, train)
    x = jnp.max(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)(x) / 9.0
    return x.astype(jnp.float32)


def run_jax(args, images, labels):
  """(train images/s, TTA eval images/s, last loss)."""
  mean, std = images.mean((0, 1, 2)).astype(np.float32), images.std((0, 1, 2)).astype(np.float32)
  module = AirbenchNet(whitening_kernel((images[:5000] - mean) / std), args.widths,
                       dtype=jnp.dtype(args.dtype))
  model = linen_model(module)
  tx = optax.chain(optax.add_decayed_weights(5e-4),
                   optax.sgd(args.learning_rate, momentum=0.85, nesterov=True))
  augment = make_augment(flip=True, crop_padding=2)

  def preprocess(rng, batch):
    x = (batch['inputs'].astype(jnp.float32) / 255.0 - mean / 255.0) / (std / 255.0)
    return {**batch, 'inputs': augment(rng, x)}

  step = jax.jit(with_preprocess(
      make_train_step(model.apply, classification_loss(LABEL_SMOOTHING), tx), preprocess),
      donate_argnums=0)
  device_images, device_labels = jax.device_put(images), jax.device_put(labels)
  state = create_train_state(model, tx, jax.random.PRNGKey(0), images[:1] / 255.0)
  batches = len(images) // args.batch_size

  def batch(i):
    i = i % batches * args.batch_size
    return {'inputs': jax.lax.dynamic_slice_in_dim(device_images, i, args.batch_size),
            'labels': jax.lax.dynamic_slice_in_dim(device_labels, i, args.batch_size)}

  get_batch = jax.jit(batch)
  for i in range(args.warmup):
    state, metrics = step(state, get_batch(i))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(args.steps):
    state, metrics = step(state, get_batch(i))
  loss = float(metrics['loss'].value())
  train_rate = args.steps * args.batch_size / (time.perf_counter() - start)

  @jax.jit
  def tta_logits(variables, images):
    x = (images.astype(jnp.float32) - mean) / std
    logits = lambda x: model.apply(variables, x, train=False)[0]
    return 0.5 * (logits(x) + logits(x[:, :, ::-1]))

  variables = {'params': state.params, **state.model_state}
  jax.block_until_ready(tta_logits(variables, device_images[:args.batch_size]))
  start = time.perf_counter()
  for i in range(args.steps):
    out = tta_logits(variables, get_batch(i)['inputs'])
  jax.block_until_ready(out)
  eval_rate = args.steps * args.batch_size / (time.perf_counter() - start)
  return train_rate, eval_rate, loss


def run_torch(args, images, labels):
  """The same net and step in PyTorch (channels-last, bf16 autocast): (train, eval) images/s."""
  import torch
  from torch import nn as tnn

  device = 'cuda' if torch.cuda.is_available() else ('cpu' if args.torch_cpu else None)
  if device is None:
    raise ImportError('torch has no GPU here (pass --torch_cpu to run it on the CPU)')
  mean, std = images.mean((0, 1, 2)).astype(np.float32), images.std((0, 1, 2)).astype(np.float32)
  whiten = torch.from_numpy(whitening_kernel((images[:5000] - mean) / std)).permute(3, 2, 0, 1)

  def group(c_in, c_out):
    return tnn.Sequential(
        tnn.Conv2d(c_in, c_out, 3, padding=1, bias=False), tnn.MaxPool2d(2),
        tnn.BatchNorm2d(c_out, momentum=0.4, eps=1e-12, affine=True), tnn.GELU(),
        tnn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        tnn.BatchNorm2d(c_out, momentum=0.4, eps=1e-12, affine=True), tnn.GELU())

  whiten_conv = tnn.Conv2d(3, 24, 2, bias=True)
  whiten_conv.weight.data.copy_(whiten)
  whiten_conv.weight.requires_grad = False
  widths = (24,) + tuple(args.widths)
  net = tnn.Sequential(whiten_conv, tnn.GELU(),
                       *[group(widths[i], widths[i + 1]) for i in range(len(args.widths))],
                       tnn.AdaptiveMaxPool2d(1), tnn.Flatten(),
                       tnn.Linear(widths[-1], 10, bias=False))
  net = net.to(device, memory_format=torch.channels_last)
  optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad],
                              lr=args.learning_rate, momentum=0.85, nesterov=True,
                              weight_decay=5e-4)
  loss_fn = tnn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  x_all = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
  y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
  m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
  s = torch.tensor(std, device=device).view(1, 3, 1, 1)
  batches = len(images) // args.batch_size
  autocast = torch.autocast(device, dtype=torch.bfloat16)

  def augment(x):  # Flip half the batch, then translate by up to 2 pixels (reflect pad + crop).
    flip = torch.rand(x.shape[0], device=device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = tnn.functional.pad(x, (2, 2, 2, 2), mode='reflect')
    dy, dx = np.random.randint(0, 5, 2)
    return padded[:, :, dy:dy + 32, dx:dx + 32]

  def train_step(i):
    i = i % batches * args.batch_size
    x = ((x_all[i:i + args.batch_size].float() - m) / s).contiguous(
        memory_format=torch.channels_last)
    with autocast:
      loss = loss_fn(net(augment(x)) / 9.0, y_all[i:i + args.batch_size])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  net.train()
  for i in range(args.warmup):
    train_step(i)
  sync()
  start = time.perf_counter()
  for i in range(args.steps):
    loss = train_step(i)
  loss.item()
  train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
  net.eval()
  with torch.no_grad(), autocast:
    start = time.perf_counter()
    for i in range(args.steps):
      j = i % batches * args.batch_size
      x = ((x_all[j:j + args.batch_size].float() - m) / s).contiguous(
          memory_format=torch.channels_last)
      out = 0.5 * (net(x) + net(x.flip(3)))
    out.float().sum().item()
    eval_rate = args.steps * args.batch_size / (time.perf_counter() - start)
  return train_rate, eval_rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('--batch_size', type=int, default=1024)
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--examples', type=int, default=50_000, help='synthetic training set')
  parser.add_argument('--learning_rate', type=float, default=0.2)
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  parser.add_argument('--torch_cpu', action='store_true', help='run the PyTorch side on the CPU')
  parser.add_argument('--quick', action='store_true', help='tiny widths, 3 steps')
  args = parser.parse_args()
  args.widths = WIDTHS
  if args.quick:
    args.widths, args.batch_size, args.steps, args.warmup, args.examples = (8, 16, 16), 32, 3, 1, 256
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.examples, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, args.examples).astype(np.int32)

  print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}); batch '
        f'{args.batch_size}, widths {args.widths}, {args.dtype}', flush=True)
  train_rate, eval_rate, loss = run_jax(args, images, labels)
  print(f'jaxmodels: train {train_rate:,.0f} img/s, TTA eval {eval_rate:,.0f} img/s '
        f'(last loss {loss:.3f})', flush=True)
  if not np.isfinite(loss):
    raise SystemExit('the loss is not finite')
  try:
    torch_train, torch_eval = run_torch(args, images, labels)
  except ImportError as e:
    print(f'pytorch: skipped ({e})')
    return
  print(f'pytorch:   train {torch_train:,.0f} img/s, TTA eval {torch_eval:,.0f} img/s')
  print(f'ratio jaxmodels / pytorch: train {train_rate / torch_train:.2f}x, '
        f'eval {eval_rate / torch_eval:.2f}x')


if __name__ == '__main__':
  main()
