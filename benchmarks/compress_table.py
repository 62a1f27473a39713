"""The compression table on Fashion-MNIST: size on disk, parameters (and non-zeros), test
accuracy and CPU latency per image of each model, from finished runs.

  python experiments/fashion_mnist.py --config=experiments/configs/compress.py:fp32 \
      --workdir=runs/compress/fp32                     # likewise :qat, :prune50, :prune80
  python experiments/distill.py --workdir=runs/compress/distill \
      --config.distill.teachers=runs/compress/fp32     # and :labels for the baseline
  python benchmarks/compress_table.py --runs=runs/compress --out=runs/compress/table.md

Rows: fp32; int8 and w8a8 post-training quantisation of fp32; the QAT run as its w8a8
model; the pruned runs (their zeros cost bytes only once deflated: both sizes are given);
fp32 with half its channels removed (structured, before fine-tuning; FLOPs from XLA's cost
analysis); the distilled student and the same student trained on labels alone. A row whose
workdir is missing is left out. Latency: median of 50 calls, batch 1 and batch 256, on the
CPU (JAX_PLATFORMS=cpu).
"""
import argparse
import json
import os
import sys
import tempfile


os.environ.setdefault('JAX_PLATFORMS', 'cpu')
import jax  # noqa: E402

from jaxmodels.compress import measure  # noqa: E402
from jaxmodels.compress.channels import prune_run_channels  # noqa: E402
from jaxmodels.compress.quantize import SCHEMES, quantize_run  # noqa: E402
from jaxmodels.runs.trained import TrainedRun  # noqa: E402

FLOAT_RUNS = {'prune50': 'pruned 50 %', 'prune80': 'pruned 80 %',
              'distill': 'distilled student', 'distill_t2a5': 'distilled student, T 2 alpha 0.5',
              'labels': 'student, labels only',
              'channels50ft': 'channels pruned 50 %, fine-tuned 1 epoch'}


def _row(name, predict, variables, save, inputs, labels, flops_of=None) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    size = save(os.path.join(tmp, 'model.npz'))
  params = measure.count_params(variables['params'])
  row = {'model': name, 'bytes': size, 'deflated_bytes': measure.compressed_bytes(variables),
         'params': params['total'], 'nonzero': params['nonzero'],
         'accuracy': measure.accuracy(predict, inputs, labels),
         'latency_ms_b1': 1e3 * measure.latency(predict, inputs[:1]),
         'latency_ms_per_image_b256': 1e3 * measure.latency(predict, inputs[:256]) / 256}
  if flops_of:
    row['flops_per_image'] = flops_of()
  return row


def _float_row(name, run, inputs, labels):
  example = inputs[:1]
  flops = lambda: measure.forward_flops(lambda v, x: run.module.apply(v, x, train=False),
                                        run.variables, example)
  variables = jax.tree.map(jax.numpy.asarray, run.variables)
  predict = jax.jit(lambda x: run.module.apply(variables, x, train=False))  # Compiled once.
  return _row(name, predict, run.variables,
              lambda path: measure.save_arrays(path, run.variables), inputs, labels, flops)


def _quantized_row(name, quantized, inputs, labels):
  return _row(name, quantized.apply, quantized.variables, quantized.save, inputs, labels)


def table(runs: str) -> list[dict]:
  base = TrainedRun.load(os.path.join(runs, 'fp32'))
  split, reason = measure.test_split(base.card)
  if split is None:
    raise SystemExit(f'error: no test split: {reason}')
  inputs, labels = base.model_inputs(split[0]), split[1]
  rows = [_float_row('fp32', base, inputs, labels)]
  for scheme in SCHEMES:
    rows.append(_quantized_row(f'{scheme} PTQ', quantize_run(base, scheme), inputs,
                               labels))
  if os.path.isdir(os.path.join(runs, 'qat')):
    qat = TrainedRun.load(os.path.join(runs, 'qat'))
    rows.append(_quantized_row('w8a8 QAT', quantize_run(qat, 'w8a8'), inputs, labels))
  for key, name in FLOAT_RUNS.items():
    if os.path.isdir(os.path.join(runs, key)):
      rows.append(_float_row(name, TrainedRun.load(os.path.join(runs, key)), inputs, labels))
  rows.append(_float_row('channels pruned 50 %', prune_run_channels(base, 0.5), inputs, labels))
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ['| model | bytes (.npz) | deflated | params | non-zero | test acc | ms/img b1 | '
           'ms/img b256 | MFLOPs/img |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    flops = f"{r['flops_per_image'] / 1e6:.2f}" if r.get('flops_per_image') else '-'
    lines.append(f"| {r['model']} | {r['bytes']:,} | {r['deflated_bytes']:,} | {r['params']:,} | "
                 f"{r['nonzero']:,} | {r['accuracy']:.4f} | {r['latency_ms_b1']:.3f} | "
                 f"{r['latency_ms_per_image_b256']:.4f} | {flops} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', default='runs/compress', help='directory of the runs')
  parser.add_argument('--out', help='also write the table here (.md; .json beside it)')
  args = parser.parse_args(argv)
  rows = table(args.runs)
  text = markdown(rows)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
    with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
