"""GPT-124M-size (12 layers x 768, 12 heads, seq 1024, vocab 50304) bf16 training throughput
and MFU on one accelerator, with jaxmodels' GPT and train step.

  python benchmarks/gpu_gpt.py                       # batch 16 x 1024 tokens, bf16
  python benchmarks/gpu_gpt.py --batch_size 32 --remat
  python benchmarks/gpu_gpt.py --quick               # a tiny model for 3 steps (any backend)

Needs only jax, flax, optax and numpy besides jaxmodels itself. Data are random
tokens held on the device, so the figure is the step's own speed. MFU is given
twice: with XLA's FLOP count of the compiled step, and with the usual model
count 6 N + 12 L T E per token (N params without embeddings, L layers, T
sequence, E width), against the peak in jaxmodels.report.PEAK_FLOPS.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.models.gpt import GPT
from jaxmodels.report.throughput import compiled_flops, peak_flops
from jaxmodels.train.losses import softmax_cross_entropy
from jaxmodels.train.model import linen_model
from jaxmodels.train.state import create_train_state
from jaxmodels.train.step import make_train_step

GPT2_SMALL = dict(num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072, vocab_size=50304,
                  seq_len=1024)
TINY = dict(num_layers=2, num_heads=2, embed_dim=64, mlp_dim=256, vocab_size=512, seq_len=64)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps after compiling')
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  parser.add_argument('--remat', action='store_true', help='recompute block activations')
  parser.add_argument('--scan_layers', action='store_true')
  parser.add_argument('--quick', action='store_true', help='tiny model, 3 steps')
  args = parser.parse_args()
  shape = dict(TINY if args.quick else GPT2_SMALL)
  if args.quick:
    args.batch_size, args.steps, args.warmup = 2, 3, 1
  seq_len = shape.pop('seq_len')

  module = GPT(**shape, max_length=seq_len, dropout=0.0, positions='learned',
               tie_embeddings=True, remat=args.remat, scan_layers=args.scan_layers,
               dtype=jnp.dtype(args.dtype))
  model = linen_model(module)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 6e-4, 100, 10_000),
                               b2=0.95, weight_decay=0.1))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch_size, seq_len + 1), 0,
                              shape['vocab_size'])
  batch = {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}
  state = create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'][:1])
  loss = lambda logits, batch: softmax_cross_entropy(logits, batch['labels'])
  step = jax.jit(make_train_step(model.apply, loss, tx), donate_argnums=0)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  final_loss = float(metrics['loss'].value())
  seconds = (time.perf_counter() - start) / args.steps

  params = sum(x.size for x in jax.tree.leaves(state.params))
  embed = shape['vocab_size'] * shape['embed_dim'] + seq_len * shape['embed_dim']
  tokens_per_step = args.batch_size * seq_len
  model_flops = tokens_per_step * (6 * (params - embed) +
                                   12 * shape['num_layers'] * seq_len * shape['embed_dim'])
  xla_flops = compiled_flops(compiled)
  device = jax.devices()[0]
  peak = peak_flops(device.device_kind)
  print(f'device: {device.device_kind} ({jax.default_backend()}), {params / 1e6:.1f}M params, '
        f'{args.dtype}, batch {args.batch_size} x {seq_len}, remat={args.remat}')
  print(f'compile {compile_s:.1f} s; step {seconds * 1e3:.1f} ms; '
        f'{tokens_per_step / seconds:,.0f} tokens/s; loss {final_loss:.3f}')
  for name, flops in (('model count 6N+12LTE', model_flops), ('XLA cost analysis', xla_flops)):
    if not flops:
      print(f'{name}: not available on this backend')
      continue
    achieved = flops / seconds
    mfu = f'MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s' if peak else 'peak unknown'
    print(f'{name}: {flops / 1e12:.2f} TFLOP/step, {achieved / 1e12:.1f} TFLOP/s, {mfu}')
  if not np.isfinite(final_loss):
    raise SystemExit('the loss is not finite')


if __name__ == '__main__':
  main()
