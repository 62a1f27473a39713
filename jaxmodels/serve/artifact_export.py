"""A finished run -> an artifact that runs with jax alone (`jaxmodels export`).

The inference function `f(weights, inputs) -> logits` (the model in inference mode, image
normalisation inside) is exported with `jax.export` for a symbolic batch dimension and
the platforms asked for; its weights go beside it as safetensors (plain arrays, nothing
executable), and `manifest.json` records what the function cannot do itself (decoding
images, word tokenisation), the class names, the jax version and the training run with its
test metrics. Beside them, `reference.npz` holds what a served model's drift is judged
against (`drift.Reference`, fitted on the run's validation split), and a run made by
`jaxmodels retrain` brings its evaluation (retrain.json) into the manifest, where the
promotion gate reads it. `export_version` adds the artifact to a model repository
(`model_repository`) as its next version.
"""
import datetime
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from jaxmodels import data as data_lib
from jaxmodels.errors import InputError
from jaxmodels.serve import artifact, drift, int8, model_repository
from jaxmodels.runs.trained import TrainedRun

PLATFORMS = ('cpu', 'cuda', 'tpu')
REFERENCE = 'reference.npz'
RETRAIN_RECORD = 'retrain.json'  # What `jaxmodels retrain` writes into its run's workdir.
QUANTIZATIONS = ('int8',)
FORMAT_VERSION = 1


def inference_function(module, spec: dict):
  """f(weights {'params/Conv_0/kernel': array, ...}, inputs (B, ...)) -> logits (B, C) float32:
  `module` in inference mode after the run's input preprocessing (`data.to_model_inputs`:
  pixels 0..255 normalised as in training). int8 weights are dequantised inside."""
  def infer(weights, inputs):
    variables = traverse_util.unflatten_dict(int8.dequantize(weights), sep='/')
    return module.apply(variables, data_lib.to_model_inputs(spec, inputs), train=False)
  return infer


def input_spec(card: dict) -> tuple[dict, dict | None]:
  """(the manifest's 'input', its 'tokenizer') for a run's model.json. InputError for runs that
  are not classifiers of images or word-tokenised texts."""
  spec = card['inputs']
  if spec.get('kind') == 'image':
    height, width, channels = spec['shape']
    return {'kind': 'image', 'shape': spec['shape'], 'dtype': 'float32', 'range': [0, 255],
            'on_host': f'decode PNG/JPEG, {"grayscale" if channels == 1 else "RGB"}, resize to '
                       f'{height}x{width} (bilinear), pixels 0..255',
            'in_function': {'normalize': {'mean': spec['mean'], 'std': spec['std']}}}, None
  if spec.get('kind') == 'words':
    vocab_size = card['model']['arguments']['vocab_size']
    return ({'kind': 'words', 'shape': [spec['max_length']], 'dtype': 'int32',
             'range': [0, vocab_size - 1], 'on_host': 'tokenizer'},
            {'kind': 'words', 'cleaning': data_lib.clean_text.__doc__.strip(),
             'special_ids': {'padding': data_lib.text.PAD, 'unknown': data_lib.text.UNK,
                             'cls': data_lib.text.CLS},
             'vocabulary_first_id': 3, 'vocabulary': spec['vocabulary'],
             'max_length': spec['max_length']})
  raise InputError(f'export takes classification runs (image or text inputs); the run in '
                   f'{card.get("task")} has {spec.get("kind")!r} inputs', key='workdir')


def export_function(infer, weights: dict, spec: dict, platforms) -> jax.export.Exported:
  """`infer` exported for inputs (batch, *spec['shape']) with a symbolic batch."""
  (batch,) = jax.export.symbolic_shape('batch')
  abstract_weights = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  inputs = jax.ShapeDtypeStruct((batch, *spec['shape']), jnp.dtype(spec['dtype']))
  return jax.export.export(jax.jit(infer), platforms=tuple(platforms))(abstract_weights, inputs)


def logits_of(infer, weights: dict, inputs, batch_size: int = 1000) -> np.ndarray:
  """`infer`'s logits (N, C) for host inputs (N, ...), a batch at a time."""
  call = jax.jit(infer)
  return np.concatenate([np.asarray(call(weights, inputs[i:i + batch_size]))
                         for i in range(0, len(inputs), batch_size)])


def accuracy(infer, weights: dict, inputs, labels, batch_size: int = 1000) -> float:
  return float(np.mean(logits_of(infer, weights, inputs, batch_size).argmax(-1) == labels))


def fit_reference(infer, weights: dict, split) -> drift.Reference:
  """The drift reference of the model on `split`, (inputs as stored (N, ...), labels (N,))."""
  inputs, labels = split
  return drift.fit_reference(artifact.softmax(logits_of(infer, weights, inputs)), inputs, labels)


def export_run(workdir: str, out: str, *, platforms=PLATFORMS, quantization: str | None = None,
               step: int | None = None, test_split=None, reference_split=None,
               say=print) -> dict:
  """Writes the artifact of the run in `workdir` to the new directory `out` (atomically: a
  failed export leaves nothing there) and returns its manifest. quantization 'int8' also
  measures the test accuracy before and after on `test_split`, (inputs as stored (N, ...),
  labels (N,)) of the run's test split, when it is given. `reference_split`, ('validation'
  or another split's name, (inputs, labels)), gives the drift reference (`drift`) of the
  exported weights; without one the served version reports no drift."""
  if quantization not in (None, *QUANTIZATIONS):
    raise InputError(f'quantization must be one of {", ".join(QUANTIZATIONS)}, got '
                     f'{quantization!r}', key='quantization')
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown or not platforms:
    raise InputError(f'platforms must be some of {", ".join(PLATFORMS)}, got '
                     f'{", ".join(platforms) or "none"}', key='platforms')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise InputError(f'{out} already exists: export into a new directory', key='out')
  run = TrainedRun.load(workdir, step)
  spec, tokenizer = input_spec(run.card)
  infer = inference_function(run.module, run.card['inputs'])
  weights = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(run.variables,
                                                                      sep='/').items()}
  manifest = {
      'format': 'jaxmodels-export', 'format_version': FORMAT_VERSION,
      'files': {'function': artifact.FUNCTION, 'weights': artifact.WEIGHTS,
                'loader': artifact.LOADER},
      'function': {'signature': 'f(weights, inputs) -> logits', 'batch': 'symbolic',
                   'platforms': list(platforms), 'outputs': 'logits (batch, classes) float32'},
      'input': spec, 'tokenizer': tokenizer, 'class_names': run.class_names,
      'jax_version': jax.__version__,
      'run': {'workdir': os.path.abspath(workdir), 'task': run.card['task'],
              'dataset': run.card.get('dataset'), 'step': run.card['step'],
              'model': run.card['model'], 'test': run.card.get('test')},
      'quantization': None, 'reference': None, 'retrain': _retrain_record(workdir),
      'exported_at': datetime.datetime.now().astimezone().isoformat()}
  if quantization:
    quantized = int8.quantize_int8(weights)
    manifest['quantization'] = {
        'scheme': 'int8 weight-only, symmetric, one scale per output channel (kernels) or row '
                  '(embeddings)', 'float_weight_bytes': sum(v.nbytes for v in weights.values()),
        'weight_bytes': sum(v.nbytes for v in quantized.values())}
    if test_split is None:
      say('warning: no test split given; the accuracy cost of quantization was not measured')
    else:
      inputs, labels = test_split
      before, after = (accuracy(infer, w, inputs, labels) for w in (weights, quantized))
      manifest['quantization'].update(test_examples=len(labels), float_test_accuracy=before,
                                      test_accuracy=after, accuracy_cost=before - after)
      say(f'int8: test accuracy {after:.4f} (float {before:.4f}, cost '
          f'{100 * (before - after):+.2f} points) on {len(labels)} examples')
    weights = quantized
  reference = None
  if reference_split is not None:
    split_name, split = reference_split
    reference = fit_reference(infer, weights, split)
    manifest['reference'] = {'file': REFERENCE, 'split': split_name, **reference.to_json()}
    say(f'drift reference: {reference.examples} {split_name} examples, accuracy '
        f'{reference.accuracy:.4f}, expected calibration error '
        f'{reference.expected_calibration_error:.4f}')
  else:
    say('warning: no validation split given; the served version will report no drift')
  exported = export_function(infer, weights, spec, platforms)
  _write(out, manifest, exported, weights, reference)
  return manifest


def _retrain_record(workdir: str) -> dict | None:
  """retrain.json of a run `jaxmodels retrain` made (its feedback and evaluation), else None."""
  path = os.path.join(workdir, RETRAIN_RECORD)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def export_version(workdir: str, repo: str, **kwargs) -> tuple[int, dict]:
  """Exports the run in `workdir` as the next version of the model repository `repo`
  (`model_repository`; created if absent) and returns (its number, its manifest). The
  keywords are `export_run`'s."""
  manifests = []
  version = model_repository.ModelRepository(repo).add_version(
      lambda directory: manifests.append(export_run(workdir, directory, **kwargs)))
  return version, manifests[0]


def _write(out: str, manifest: dict, exported, weights: dict, reference) -> None:
  def write_files(directory: str) -> None:
    with open(os.path.join(directory, artifact.FUNCTION), 'wb') as f:
      f.write(exported.serialize())
    safetensors.numpy.save_file(weights, os.path.join(directory, artifact.WEIGHTS))
    if reference is not None:
      reference.save(os.path.join(directory, REFERENCE))
    with open(os.path.join(directory, artifact.MANIFEST), 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=2)
    shutil.copyfile(artifact.__file__, os.path.join(directory, artifact.LOADER))
  write_directory(out, write_files)


def write_directory(out: str, write_files) -> None:
  """`write_files(directory)` into a new directory beside `out`, which then becomes `out` in
  one rename (an empty `out` is replaced): a failed write leaves nothing at `out`. Modes
  are mkdir's and open's under the umask."""
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  partial = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.partial-', dir=parent)
  try:
    write_files(partial)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp's 0700 (and safetensors' 0600) -> as mkdir's
    for name in os.listdir(partial):
      os.chmod(os.path.join(partial, name), 0o666 & ~umask)
    if os.path.isdir(out):
      os.rmdir(out)  # Empty (checked): the complete artifact takes its place.
    os.rename(partial, out)
  finally:
    shutil.rmtree(partial, ignore_errors=True)


def directory_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
