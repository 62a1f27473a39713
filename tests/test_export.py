"""`jaxmodels export`: the artifact loads in a process that imports only jax and numpy and
gives the training-time logits at any batch size; int8 export is per-channel, measured and
smaller; bad export requests are one clear error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deploy_run import images, trained_once
from jaxmodels import console
from jaxmodels.errors import InputError
from jaxmodels.serve import artifact_export as export
from jaxmodels.serve import int8
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.cli import default_extensions
from jaxmodels.tasks.registry import load_test_split

EXTENSIONS = default_extensions()  # What the experiments apply.

# Run in a fresh interpreter: load the artifact with its own loader, jax and numpy only.
LOADER_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import artifact
model = artifact.Artifact(sys.argv[1])
inputs = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([model.logits(inputs[:n]) for n in (1, 7, 64)]))
banned = sorted(m for m in sys.modules if m.split('.')[0] in ('jaxmodels', 'flax', 'safetensors'))
print('BANNED', banned)
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  return trained_once(tmp_path_factory)[0]


@pytest.fixture(scope='module')
def exported(trained, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('artifacts') / 'float')
  assert console.main(['export', trained, '--out', out, '--platforms', 'cpu,cuda,tpu']) == 0
  return out


def test_artifact_loads_with_jax_and_numpy_alone_and_equals_apply(trained, exported, tmp_path):
  inputs, _ = images(64, 5)
  np.save(tmp_path / 'inputs.npy', inputs.astype(np.float32))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # jaxmodels not importable
  env['XLA_FLAGS'] = ''
  result = subprocess.run(
      [sys.executable, '-c', LOADER_SCRIPT, exported, str(tmp_path / 'inputs.npy'),
       str(tmp_path / 'logits.npy')], capture_output=True, text=True, env=env, cwd=tmp_path,
      timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'BANNED []' in result.stdout
  run = TrainedRun.load(trained)
  expected = np.concatenate([np.asarray(run.apply(run.model_inputs(inputs[:n])))
                             for n in (1, 7, 64)])
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), expected, rtol=0, atol=1e-6)
  manifest = json.loads(open(os.path.join(exported, 'manifest.json')).read())
  assert manifest['function']['platforms'] == ['cpu', 'cuda', 'tpu']
  assert manifest['input']['shape'] == [8, 8, 1] and manifest['class_names'][0] == 'class0'
  assert manifest['run']['test'] == run.card['test'] and manifest['quantization'] is None


def test_int8_is_per_channel_round_to_nearest():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32) * np.arange(1, 6)
  weights = {'params/Conv_0/kernel': kernel, 'params/Conv_0/bias': np.ones(5, np.float32),
             'params/Embed_0/embedding': rng.normal(size=(7, 3)).astype(np.float32)}
  q = int8.quantize_int8(weights)
  for name, axes in (('params/Conv_0/kernel', (0, 1, 2)), ('params/Embed_0/embedding', (1,))):
    scale = np.abs(weights[name]).max(axis=axes, keepdims=True) / 127  # numpy reference
    np.testing.assert_array_equal(q[name], np.round(weights[name] / scale).astype(np.int8))
    np.testing.assert_allclose(q[name + ':scale'], scale, rtol=1e-7)
    back = np.asarray(int8.dequantize(q)[name])
    assert np.abs(back - weights[name]).max() <= scale.max() / 2 + 1e-6
  assert q['params/Conv_0/bias'].dtype == np.float32


def test_int8_export_measures_accuracy_and_is_smaller(trained, exported, tmp_path):
  out = str(tmp_path / 'int8')
  manifest = export.export_run(trained, out, platforms=['cpu'], quantization='int8',
                               test_split=load_test_split(TrainedRun.load(trained)),
                               say=lambda _: None)
  info = manifest['quantization']
  # The float accuracy measured at export is the run's own test accuracy.
  assert info['float_test_accuracy'] == pytest.approx(manifest['run']['test']['accuracy'],
                                                      abs=1e-6)
  assert info['test_examples'] == 96 and abs(info['accuracy_cost']) <= 0.05
  float_size = os.path.getsize(os.path.join(exported, 'weights.safetensors'))
  assert float_size >= 3 * os.path.getsize(os.path.join(out, 'weights.safetensors'))


def test_bad_export_requests(trained, exported, tmp_path):
  with pytest.raises(InputError, match='already exists'):
    export.export_run(trained, exported)
  with pytest.raises(InputError, match='platforms'):
    export.export_run(trained, str(tmp_path / 'a'), platforms=['gpu'])
  assert console.main(['export', str(tmp_path), '--out', str(tmp_path / 'b')]) == 2
  assert not (tmp_path / 'b').exists() and not (tmp_path / 'a').exists()


def test_a_text_classifier_exports_with_its_tokenizer(tmp_path, mock_tfds, capsys):
  """Texts go through the manifest's tokenizer on the host and the exported function: the
  same logits as the run's own tokenisation and apply."""
  from jaxmodels.serve.artifact import Artifact
  from jaxmodels.serve.inputs import InputReader
  from jaxmodels.tasks import runner, text_classification
  config = runner.default_config(text_classification.TASK, EXTENSIONS)
  config.model = dict(name='lstm', embed_dim=8, hidden=8)
  config.data.update(source='tfds', max_length=12, min_count=1)
  config.train.update(batch_size=16, num_steps=4, log_every_steps=2, eval_batch_size=64,
                      steps_per_dispatch=1, progress=False)
  with mock_tfds(num_examples=48):
    runner.run(text_classification.TASK, config, str(tmp_path / 'run'), extensions=EXTENSIONS)
  export.export_run(str(tmp_path / 'run'), str(tmp_path / 'out'), platforms=['cpu'])
  run, model = TrainedRun.load(str(tmp_path / 'run')), Artifact(str(tmp_path / 'out'))
  texts = ['A film, of all things!', 'nothing in the vocabulary: zzyzx', run.card['inputs'][
      'vocabulary'][0] * 3]
  np.testing.assert_allclose(model.logits(InputReader(model.manifest).texts(texts)),
                             run.apply(run.model_inputs(texts)), rtol=0, atol=1e-6)
  capsys.readouterr()  # The run's own output.
  assert console.main(['predict', str(tmp_path / 'out'), texts[0], '--json']) == 0
  assert json.loads(capsys.readouterr().out)['predictions'][0]['input'] == texts[0]
