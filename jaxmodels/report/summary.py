"""The final run summary: `summary.json` for machines, `summary.txt` for people."""
import json
import os


def format_summary(summary: dict) -> str:
  lines = []
  for key, value in summary.items():
    if isinstance(value, dict):
      lines.append(f'{key}:')
      lines += [f'  {k}: {_fmt(v)}' for k, v in value.items()]
    elif isinstance(value, list) and value and isinstance(value[0], dict):
      lines.append(f'{key}: {len(value)} entries (in summary.json)')
    elif isinstance(value, str) and '\n' in value:
      lines += [f'{key}:', value]
    else:
      lines.append(f'{key}: {_fmt(value)}')
  return '\n'.join(lines) + '\n'


def _fmt(value):
  return f'{value:.4f}' if isinstance(value, float) else str(value)


def write_summary(workdir: str, summary: dict) -> str:
  """Writes both files and returns the text form."""
  text = format_summary(summary)
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, 'summary.txt'), 'w', encoding='utf-8') as f:
    f.write(text)
  return text
