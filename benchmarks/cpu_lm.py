"""experiments/lm.py's byte-level GPT (4 x 256, 4 heads, MLP 1024, sequence 128, AdamW,
dropout 0.1) on the CPU: jaxmodels' `fit` against the same model in PyTorch eager and
`torch.compile`, float32 and bf16 (jax: bf16 compute, float32 params; PyTorch: CPU autocast).

  python benchmarks/cpu_lm.py                        # batch 32 and 8, fp32 and bf16, 6 rounds
  python benchmarks/cpu_lm.py --batch_sizes 32 --precisions fp32 --no_compile
  python benchmarks/cpu_lm.py --quick                # a few steps of each: checks that it runs
  python benchmarks/cpu_lm.py --baseline_tree /tmp/old   # also jaxmodels from another tree
                                                     # (git archive REV jaxmodels | tar -x -C DIR)

Each contender runs in a process of its own (thread pools of two libraries in one process
slow each other) that stays up for the whole comparison: it warms up for one untimed chunk
of `--steps` steps (compilation included), then trains one chunk per round when the parent
says go, while the others wait idle on their pipes. The rounds rotate the order, so drift
in a shared machine, minute to minute, hits every contender alike; the figures are medians
over rounds (range in brackets), the ratios are ratios of medians of this run. jaxmodels
trains through the public `fit` (the library's train step, its CPU path, a host sync only
at logging: once a chunk) with the task's loss and metrics, timed by fit itself; PyTorch by
the wall clock around its chunk, ended by `loss.item()`.

The step breakdown (`profile`) is measured by timing jitted pieces of the same step on the
same batch in one process (not a tracer): the forward pass, forward + backward, the whole
step with and without dropout, the dropout masks alone, the optimiser update alone.
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
SHAPE = dict(num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024, vocab_size=256, seq_len=128)
CONTENDERS = ('jaxmodels', 'pytorch', 'torch_compile')
TARGETS = {'fp32': 1.2, 'bf16': 1.0}  # jaxmodels / PyTorch eager tokens/s.


def cpu_model() -> str:
  """The CPU's model name and its bf16 flags (ratios move with the machine)."""
  text = pathlib.Path('/proc/cpuinfo').read_text()
  name = next((line.split(':', 1)[1].strip() for line in text.splitlines()
               if line.startswith('model name')), 'unknown')
  flags = [f for f in ('amx_bf16', 'avx512_bf16') if f' {f}' in text]
  return f'{name} ({os.cpu_count()} cores; bf16 flags: {", ".join(flags) or "none"})'


def corpus(rows: int, seq_len: int):
  """(inputs, labels) int32 (rows, seq_len): byte windows of a text (Debian's fortunes when
  installed, else seeded random bytes), labels shifted by one."""
  path = pathlib.Path('/usr/share/games/fortunes/fortunes')
  if path.exists():
    data = np.frombuffer(path.read_bytes(), np.uint8)
  else:
    data = np.random.default_rng(0).integers(32, 127, rows * (seq_len + 1), dtype=np.uint8)
  data = np.resize(data, rows * seq_len + 1).astype(np.int32)
  return data[:-1].reshape(rows, seq_len), data[1:].reshape(rows, seq_len)


# ------------------------------------------------------------------------------ contenders
# Each trains one untimed chunk of `steps` steps, then `rounds` timed ones, one per go of
# the parent (`Turns`), and reports each chunk's tokens/s.


class Turns:
  """A worker's side of the interleaving, over its stdin and stdout: it says when it is warm
  (null) and what each chunk ran at, and starts a chunk only when the parent says go."""

  def say(self, tokens_per_second):
    print(json.dumps(tokens_per_second), flush=True)

  def wait(self):
    if sys.stdin.readline().strip() != 'go':
      raise SystemExit(0)  # The parent is gone or done.


def jax_model(dropout: float, bf16: bool):
  import jax.numpy as jnp

  from jaxmodels.models.gpt import GPT
  shape = dict(SHAPE)
  seq_len = shape.pop('seq_len')
  return GPT(**shape, max_length=seq_len, dropout=dropout,
             dtype=jnp.bfloat16 if bf16 else jnp.float32)


def jax_step(module, total_steps: int):
  """The train step and optimiser as the language-model task builds them."""
  import jaxmodels as jm
  from jaxmodels.tasks.language_model import lm_loss
  from jaxmodels.train import optim

  model = jm.linen_model(module)
  tx = optim.with_lr_multiplier(optim.make_optimizer(
      'adamw', optim.warmup_cosine(3e-4, total_steps, 100), weight_decay=0.1, clip_norm=1.0))
  step = jm.make_train_step(model.apply, lm_loss, tx, jm.classification_metrics(256, top_k=0))
  return model, tx, step


def run_jaxmodels(batch_size, steps, rounds, dropout, bf16, turns):
  import jaxmodels as jm
  if hasattr(jm, 'reuse_host_memory'):  # As lm.py does; before jax's first computation.
    jm.reuse_host_memory()
  import jax
  x, y = corpus(max(4096, batch_size * 64), SHAPE['seq_len'])
  total = steps * (rounds + 1)
  model, tx, step = jax_step(jax_model(dropout, bf16), total)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), x[:1])

  class Chunks(jm.Callback):
    """At each chunk's end (a log, so a host sync): its tokens/s as fit timed it (compilation
    and the time in callbacks left out), then the wait for the next go (in callback time)."""
    every_steps = steps

    def on_train_log(self, step, logs, state):
      self.rate = logs['examples_per_sec'] * SHAPE['seq_len']

    def on_steps_end(self, step, state):
      if step % steps == 0:
        turns.say(self.rate if step > steps else None)  # The first chunk is the warm-up.
        if step < total:
          turns.wait()

  jm.fit(state, step, (x, y), batch_size=batch_size, num_steps=total, log_every_steps=steps,
         callbacks=[Chunks()], progress=False)


def torch_gpt(dropout: float):
  """The same GPT in PyTorch: byte embedding (tied output), rotary positions, pre-LayerNorm
  blocks (eps 1e-6) with bias-free q/k/v/out projections, causal SDPA, tanh GELU MLP, dropout
  on the embeddings and on each residual branch."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  E, H, L, M, V, T = (SHAPE[k] for k in ('embed_dim', 'num_heads', 'num_layers', 'mlp_dim',
                                         'vocab_size', 'seq_len'))
  D = E // H
  half = D // 2
  freqs = 10_000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
  angles = torch.arange(T, dtype=torch.float32)[:, None] * freqs  # (T, D/2)

  def rotary(x):  # (B, H, T, D)
    sin, cos = angles.sin().to(x.dtype), angles.cos().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(E, eps=1e-6), nn.LayerNorm(E, eps=1e-6)
      self.qkv = nn.Linear(E, 3 * E, bias=False)
      self.out = nn.Linear(E, E, bias=False)
      self.fc1, self.fc2 = nn.Linear(E, M), nn.Linear(M, E)
      self.drop = nn.Dropout(dropout)

    def forward(self, x):
      B = x.shape[0]
      q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
      a = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
      x = x + self.drop(self.out(a.transpose(1, 2).reshape(B, T, E)))
      return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate='tanh')))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(V, E)
      nn.init.normal_(self.embed.weight, std=0.02)
      self.drop = nn.Dropout(dropout)
      self.blocks = nn.ModuleList([Block() for _ in range(L)])
      self.norm = nn.LayerNorm(E, eps=1e-6)

    def forward(self, tokens):
      x = self.drop(self.embed(tokens))
      for block in self.blocks:
        x = block(x)
      return self.norm(x) @ self.embed.weight.T

  return GPT()


def run_torch(batch_size, steps, rounds, dropout, bf16, turns, compile_model=False):
  import contextlib

  import torch
  from torch.nn import functional as F

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = torch_gpt(dropout)
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1},
                                 {'params': no_decay, 'weight_decay': 0.0}], lr=3e-4)
  forward = torch.compile(model) if compile_model else model
  x, y = (torch.from_numpy(a.astype(np.int64)) for a in corpus(max(4096, batch_size * 64),
                                                                 SHAPE['seq_len']))
  per_epoch = len(x) // batch_size
  autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if bf16 else (
      contextlib.nullcontext)

  def train(num_steps, first):
    for i in range(first, first + num_steps):
      if i % per_epoch == 0 or i == first:
        order = torch.randperm(len(x))
      index = order[(i % per_epoch) * batch_size:(i % per_epoch + 1) * batch_size]
      optimizer.zero_grad(set_to_none=True)
      with autocast():
        logits = forward(x[index])
      loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y[index].reshape(-1))
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
    return loss.item()

  train(steps, 0)
  turns.say(None)
  for round_index in range(rounds):
    turns.wait()
    start = time.perf_counter()
    train(steps, steps * (round_index + 1))
    turns.say(steps * batch_size * SHAPE['seq_len'] / (time.perf_counter() - start))


RUNNERS = dict(jaxmodels=run_jaxmodels, jaxmodels_base=run_jaxmodels, pytorch=run_torch,
               pytorch_heap=run_torch,
               torch_compile=lambda *a: run_torch(*a, compile_model=True))


def worker(args):
  """One contender, in a process of its own: its chunks' tokens/s as JSON lines (`Turns`)."""
  name, batch_size, precision = args.worker.split(':')
  import jaxmodels
  print(f'jaxmodels from {pathlib.Path(jaxmodels.__file__).parent}', file=sys.stderr)
  RUNNERS[name](int(batch_size), args.steps, args.rounds, args.dropout, precision == 'bf16',
                Turns())


def start_worker(name: str, key: str, args, log):
  """A contender's process, warmed up (its first chunk done), or None (it failed: said why)."""
  batch_size, precision = key.split()[1:]
  env = dict(os.environ)
  if name == 'jaxmodels_base':  # The same contender, importing the other tree.
    env['PYTHONPATH'] = os.pathsep.join([args.baseline_tree, env.get('PYTHONPATH', '')])
  if name == 'pytorch_heap':  # PyTorch with the malloc settings of reuse_host_memory.
    env.update(MALLOC_ARENA_MAX='1', MALLOC_MMAP_MAX_='0', MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
  command = [sys.executable, __file__, '--worker', f'{name}:{batch_size}:{precision}',
             '--steps', str(args.steps), '--rounds', str(args.rounds),
             '--dropout', str(args.dropout)]
  process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=log, text=True, cwd=ROOT, env=env)
  if next_rate(process, name, key, log) is False:
    return None
  return process


def next_rate(process, name: str, key: str, log):
  """The worker's next line: tokens/s (None for warm), or False when it died (said why)."""
  line = process.stdout.readline()
  if line.strip():
    return json.loads(line)
  process.wait()
  log.seek(0)
  last = (log.read().strip().splitlines() or ['failed'])[-1]
  print(f'  {key} {name}: skipped ({last[:160]})', flush=True)
  return False


def throughput(args):
  results = {}
  for batch_size in args.batch_sizes:
    for precision in args.precisions:
      key = f'bs {batch_size} {precision}'
      rates = {name: [] for name in args.contenders}
      logs = {name: tempfile.TemporaryFile('w+') for name in args.contenders}
      # One after another, so that no warm-up (compilation) overlaps another's.
      workers = {name: start_worker(name, key, args, logs[name]) for name in args.contenders}
      for round_index in range(args.rounds):
        names = list(args.contenders)
        names = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in names:
          if workers[name] is None:
            continue
          workers[name].stdin.write('go\n')
          workers[name].stdin.flush()
          rate = next_rate(workers[name], name, key, logs[name])
          if rate is False:
            workers[name] = None
            continue
          rates[name].append(rate)
          print(f'  {key} round {round_index + 1} {name:14s} {rate:9.0f} tokens/s', flush=True)
      for name, process in workers.items():
        if process is not None:
          process.stdin.close()
          process.wait(timeout=120)
        logs[name].close()
      results[key] = {n: (float(np.median(r)), min(r), max(r)) if r else None
                      for n, r in rates.items()}
      results[key]['rounds'] = rates  # Each round's tokens/s, in round order (for --json).
  print(f'\nthroughput (tokens/s, median of {args.rounds} rounds [range]; dropout '
        f'{args.dropout}; chunks of {args.steps} steps, interleaved, after one untimed)')
  references = [n for n in args.contenders if n != 'jaxmodels']
  for key, row in results.items():
    cells = '  '.join(f'{n} {row[n][0]:.0f} [{row[n][1]:.0f}-{row[n][2]:.0f}]' if row[n]
                      else f'{n} skipped' for n in args.contenders)
    ours = row.get('jaxmodels')
    ratios = '  '.join(f'vs {n} {ours[0] / row[n][0]:.2f}x' for n in references
                       if ours and row[n])
    print(f'  {key:12s} {cells}  |  {ratios}')
    if ours and row.get('pytorch'):
      precision = key.split()[-1]
      ratio = ours[0] / row['pytorch'][0]
      print(f'  {key:12s} target >= {TARGETS[precision]}x PyTorch eager: {ratio:.2f}x '
            f'{"met" if ratio >= TARGETS[precision] else "MISSED"}')
  return {k: v for k, v in results.items()}


def profile_pieces(batch_size: int, dropout_rate: float, repeats: int, calls: int) -> dict:
  """{piece: fastest ms per call} for one batch size."""
  import jax
  import jax.numpy as jnp

  import jaxmodels as jm
  from jaxmodels.models import layers
  from jaxmodels.tasks.language_model import lm_loss
  from jaxmodels.train import cpu_path

  x, y = corpus(batch_size, SHAPE['seq_len'])
  batch = {'inputs': jnp.asarray(x), 'labels': jnp.asarray(y)}
  rngs = {'dropout': jax.random.PRNGKey(1)}
  pieces = {}
  for dropout in (dropout_rate, 0.0):
    model, tx, step = jax_step(jax_model(dropout, False), 1000)
    state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), x[:1])
    tuned = cpu_path.tuned(step)
    pieces[f'whole step, dropout {dropout}'] = (jax.jit(tuned), state, batch)

    def loss(params, apply_fn=tuned.apply_fn):
      logits, _ = apply_fn({'params': params}, batch['inputs'], train=True, rngs=rngs)
      return jnp.mean(lm_loss(logits, batch))

    pieces[f'forward + loss, dropout {dropout}'] = (jax.jit(loss), state.params)
    pieces[f'forward + backward, dropout {dropout}'] = (jax.jit(jax.grad(loss)), state.params)
  grads = jax.tree.map(jnp.ones_like, state.params)
  pieces['optimiser update (clip + AdamW)'] = (jax.jit(tx.update), grads, state.opt_state,
                                               state.params)
  masks = 1 + 2 * SHAPE['num_layers']  # Embeddings and each residual branch.
  shape = (batch_size, SHAPE['seq_len'], SHAPE['embed_dim'])
  keep = 1.0 - dropout_rate
  pieces[f'dropout masks alone ({masks} x keep_mask {shape})'] = (jax.jit(
      lambda k: [layers.keep_mask(jax.random.fold_in(k, i), keep, shape)
                 for i in range(masks)]), jax.random.PRNGKey(0))
  pieces['  the same from jax.random.bernoulli (for comparison)'] = (jax.jit(
      lambda k: [jax.random.bernoulli(jax.random.fold_in(k, i), keep, shape)
                 for i in range(masks)]), jax.random.PRNGKey(0))
  row = {}
  for name, (fn, *inputs) in pieces.items():
    jax.block_until_ready(fn(*inputs))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(calls):
        out = fn(*inputs)
      jax.block_until_ready(out)
      times.append((time.perf_counter() - start) / calls * 1e3)
    row[name] = min(times)
  return row


def profile(args):
  """Milliseconds of jitted pieces of jaxmodels' step (fp32, on one batch): the rest of the
  step is the difference between them."""
  results = {}
  for batch_size in args.batch_sizes:
    row = profile_pieces(batch_size, args.dropout, args.repeats, args.profile_steps)
    results[str(batch_size)] = row
    whole = row[f'whole step, dropout {args.dropout}']
    print(f'  bs {batch_size}: ms per call (fastest of {args.repeats} x {args.profile_steps}); '
          '% of the whole step with dropout')
    for name, ms in row.items():
      print(f'    {name:58s} {ms:8.2f} ms {100 * ms / whole:6.1f} %')
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('--only', default='throughput,profile', help='throughput, profile')
  parser.add_argument('--batch_sizes', default='32,8', help='comma-separated')
  parser.add_argument('--precisions', default='fp32,bf16', help='fp32, bf16')
  parser.add_argument('--contenders', default=','.join(CONTENDERS),
                      help=f'of {", ".join(CONTENDERS)}, pytorch_heap (PyTorch eager with '
                      "jaxmodels.reuse_host_memory's malloc settings, from the environment)")
  parser.add_argument('--no_compile', action='store_true', help='leave torch.compile out')
  parser.add_argument('--baseline_tree', help='a directory holding another jaxmodels package: '
                      'adds it as the contender jaxmodels_base (a before/after in one run)')
  parser.add_argument('--dropout', type=float, default=0.1)
  parser.add_argument('--steps', type=int, default=20,
                      help='steps per chunk: one untimed (warm-up), then one a round')
  parser.add_argument('--rounds', type=int, default=6)
  parser.add_argument('--repeats', type=int, default=3, help='profile: timings per piece')
  parser.add_argument('--profile_steps', type=int, default=10, help='profile: calls per timing')
  parser.add_argument('--quick', action='store_true', help='a few steps of each part')
  parser.add_argument('--json', help='also write the figures to this file')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  args.precisions = [p for p in args.precisions.split(',') if p]
  args.contenders = [c for c in args.contenders.split(',')
                     if c and not (args.no_compile and c == 'torch_compile')]
  if args.baseline_tree:
    args.contenders.insert(1, 'jaxmodels_base')
  if args.quick:  # torch.compile alone would take minutes: left out.
    args.steps, args.rounds, args.repeats, args.profile_steps = 3, 1, 1, 2
    args.batch_sizes = args.batch_sizes[-1:]
    args.contenders = [c for c in args.contenders if c != 'torch_compile']
  if args.worker:
    worker(args)
    return
  import jaxmodels as jm
  if 'profile' in args.only and hasattr(jm, 'reuse_host_memory'):
    jm.reuse_host_memory()  # The profile runs here: as the contenders' own processes do.
  print(f'CPU: {cpu_model()}', flush=True)
  figures = {'cpu': cpu_model()}
  parts = dict(throughput=throughput, profile=profile)
  for name in args.only.split(','):
    print(f'== {name}', flush=True)
    figures[name] = parts[name](args)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == '__main__':
  main()
