"""A sweep's records: results.jsonl (one JSON object per trial), results.csv (a table a
spreadsheet opens) and sweep.png (the metric against each swept hyper-parameter)."""
import csv
import json
import os


RECORDS = 'results.jsonl'
TABLE = 'results.csv'
PLOT = 'sweep.png'


def read(sweep_dir: str) -> list[dict]:
  path = os.path.join(sweep_dir, RECORDS)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def best(records: list[dict], direction: str) -> dict | None:
  scored = [r for r in records if r['status'] == 'complete']
  if not scored:
    return None
  pick = max if direction == 'maximize' else min
  return pick(scored, key=lambda r: r['value'])


def write(sweep_dir: str, records: list[dict], dimensions, metric: str, direction: str) -> None:
  """Rewrites the three files (atomically each) from all records so far."""
  records = sorted(records, key=lambda r: r['trial'])
  _atomic(os.path.join(sweep_dir, RECORDS),
          lambda f: f.writelines(json.dumps(r) + '\n' for r in records))
  keys = [d.key for d in dimensions]
  test_metrics = sorted({k for r in records for k in r.get('test', {})})

  def table(f):
    writer = csv.writer(f)
    writer.writerow(['trial', 'status', *keys, f'validation_{metric}',
                     *(f'test_{k}' for k in test_metrics), 'steps', 'wall_seconds', 'workdir'])
    for r in records:
      writer.writerow([r['trial'], r['status'], *(r['overrides'].get(k, '') for k in keys),
                       '' if r['value'] is None else f'{r["value"]:.6g}',
                       *(_cell(r.get('test', {}).get(k)) for k in test_metrics),
                       r.get('steps', ''), f'{r["wall_seconds"]:.1f}', r['workdir']])
  _atomic(os.path.join(sweep_dir, TABLE), table, newline='')
  plot(records, keys, metric, os.path.join(sweep_dir, PLOT))


def plot(records: list[dict], keys: list[str], metric: str, path: str) -> None:
  """One panel per hyper-parameter: each trial's validation metric at its value (pruned
  trials hollow; numeric axes log-scaled when the values span over 20x)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  scored = [r for r in records if r['value'] is not None]
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    texts = [r['overrides'][key] for r in scored]
    numbers = _numbers(texts)
    if numbers is None:
      order = sorted(set(texts), key=texts.index)
      xs = [order.index(t) for t in texts]
      ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
    else:
      xs = numbers
      if len(xs) and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale('log')
    for x, r in zip(xs, scored):
      pruned = r['status'] == 'pruned'
      ax.scatter(x, r['value'], s=36, facecolors='none' if pruned else 'C0', edgecolors='C0')
    ax.set_xlabel(key)
    ax.set_ylabel(f'validation {metric}')
    ax.grid(alpha=0.3)
  fig.suptitle(f'{len(scored)} trials (hollow: pruned)')
  fig.tight_layout()
  fig.savefig(path + '.tmp.png', dpi=100)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)


def _numbers(texts):
  try:
    return [float(t) for t in texts]
  except ValueError:
    return None


def _cell(value):
  return '' if value is None else f'{value:.6g}' if isinstance(value, float) else value


def _atomic(path: str, write_to, newline=None) -> None:
  with open(path + '.tmp', 'w', encoding='utf-8', newline=newline) as f:
    write_to(f)
  os.replace(path + '.tmp', path)
