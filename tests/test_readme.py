"""The README's compose-it-yourself block runs exactly as written (on mock MNIST)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def _compose_block() -> str:
  section = README.read_text().split('## Compose it yourself', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_compose_block_runs_verbatim(tmp_path, monkeypatch, capsys, mock_tfds):
  monkeypatch.chdir(tmp_path)
  code = _compose_block()
  assert len(code.splitlines()) <= 40
  namespace = {}
  with mock_tfds(num_examples=300):
    exec(compile(code, str(README), 'exec'), namespace)  # noqa: S102 - the README itself.
  assert int(namespace['state'].step) == 200
  assert [r['step'] for r in namespace['history'].eval] == [100, 200]
  assert 'weighted avg' in capsys.readouterr().out
  assert (tmp_path / 'training_curves.png').stat().st_size > 0
