"""`jaxmodels explain WORKDIR [INPUT ...]`: what a finished run's model looks at.

Image runs: each INPUT is an image file (PNG, JPEG, ...; converted to the model's channels
and size) or a .npy / .npz array of images; text runs: each INPUT is a text. `--test N`
explains the first N test examples of the run's own dataset instead. Writes to --out
(default WORKDIR/explain): for images `<method>.png` (each image beside its heat map) and
`<method>.npz` (heat, explained and predicted classes); for texts `<method>.png`,
`<method>.html` (tokens coloured by their heat) and `<method>.json`.
"""
import json
import os

import numpy as np

from jaxmodels.errors import InputError


def add_arguments(parser) -> None:
  from jaxmodels.explain.maps import IMAGE_METHODS
  parser.add_argument('workdir', help='the workdir of a finished run')
  parser.add_argument('inputs', nargs='*', help='image files or arrays (image runs), or texts')
  parser.add_argument('--test', type=int, default=0, metavar='N',
                      help="explain the first N examples of the run's test split")
  parser.add_argument('--method', default='integrated_gradients',
                      help=f'{", ".join(IMAGE_METHODS)} (texts: saliency, '
                      'integrated_gradients, attention_rollout)')
  parser.add_argument('--target', default=None,
                      help='explain this class (name or index) instead of the predicted one')
  parser.add_argument('--steps', type=int, default=64,
                      help='integrated gradients: points on the path (default 64)')
  parser.add_argument('--samples', type=int, default=25,
                      help='SmoothGrad: noisy copies per input (default 25)')
  parser.add_argument('--out', default=None, help='output directory (default WORKDIR/explain)')


def read_images(paths, shape) -> tuple[np.ndarray, list[str]]:
  """(images (N, H, W, C) uint8-valued float32 fitted to `shape`, their names) from image
  files, .npy arrays ((H, W[, C]) or (N, H, W[, C])) and .npz files holding 'image'."""
  from PIL import Image
  height, width, channels = shape
  images, names = [], []
  for path in paths:
    if not os.path.isfile(path):
      raise InputError(f'no input file {path!r}')
    stem = os.path.splitext(os.path.basename(path))[0]
    if path.endswith(('.npy', '.npz')):
      array = np.load(path)
      array = array['image'] if path.endswith('.npz') else array
      array = array[None] if array.ndim in (2, 3) and array.shape[:2] == (height, width) else array
      array = array[..., None] if array.ndim == 3 else array
      if array.shape[1:] != (height, width, channels):
        raise InputError(f'{path} holds images of shape {array.shape[1:]}; the model takes '
                         f'{(height, width, channels)}')
      images += list(array.astype(np.float32))
      names += [stem] if len(array) == 1 else [f'{stem}[{i}]' for i in range(len(array))]
      continue
    try:
      image = Image.open(path).convert('L' if channels == 1 else 'RGB')
    except OSError as e:
      raise InputError(f'cannot read {path} as an image ({e})') from None
    image = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32)
    images.append(image.reshape(height, width, channels))
    names.append(stem)
  return np.stack(images), names


def _test_examples(run, count: int):
  """(inputs, labels) of the first `count` test examples of the run's own data."""
  from jaxmodels.tasks.registry import load_test_split
  inputs, labels = load_test_split(run)
  return inputs[:count], np.asarray(labels[:count])


def _target(text, class_names):
  if text is None:
    return None
  if class_names and text in class_names:
    return class_names.index(text)
  if text.isdigit() and (not class_names or int(text) < len(class_names)):
    return int(text)
  raise InputError(f'no class {text!r}' + (f'; the classes are {", ".join(class_names)}'
                                           if class_names else ''))


def main(args) -> int:
  from jaxmodels import data as data_lib
  from jaxmodels.explain import figures, maps
  from jaxmodels.runs.trained import TrainedRun
  run = TrainedRun.load(args.workdir)
  spec, names = run.card['inputs'], run.class_names or []
  if bool(args.inputs) == bool(args.test):
    raise InputError('give inputs to explain, or --test N (not both)')
  labels = None
  out = args.out or os.path.join(args.workdir, 'explain')
  os.makedirs(out, exist_ok=True)
  name_of = lambda k: names[k] if k < len(names) else str(k)
  if spec.get('kind') == 'image':
    if args.test:
      images, labels = _test_examples(run, args.test)
      titles = [f'test {i}' for i in range(len(images))]
    else:
      images, titles = read_images(args.inputs, spec['shape'])
    targets = _target(args.target, names)
    targets = None if targets is None else np.full(len(images), targets)
    heat, targets = maps.image_maps(run.module, run.variables, spec, images, args.method,
                                    targets, steps=args.steps, samples=args.samples)
    predicted = np.asarray(maps.predicted_classes(run.module, run.variables,
                                                  run.model_inputs(images)))
    captions = [f'{name_of(p)} ({name_of(labels[i])})' if labels is not None else
                f'{t}: {name_of(p)}' for i, (t, p) in enumerate(zip(titles, predicted))]
    np.savez(os.path.join(out, f'{args.method}.npz'), heat=heat, targets=targets,
             predicted=predicted, names=np.array(titles))
    written = [figures.plot_image_maps(images, heat, captions,
                                     os.path.join(out, f'{args.method}.png'), method=args.method)]
  elif spec.get('kind') == 'words':
    if args.test:
      tokens, labels = _test_examples(run, args.test)
      words = data_lib.WordVocabulary.from_words(spec['vocabulary']).words
      texts = [' '.join(words[i - 3] if i >= 3 else '<unk>' for i in row[1:] if i) for row in tokens]
    else:
      texts = [data_lib.clean_text(t) for t in args.inputs]
      tokens = run.model_inputs(texts)
    targets = _target(args.target, names)
    targets = None if targets is None else np.full(len(tokens), targets)
    heat, targets = maps.token_heat(run.module, run.variables, tokens, args.method, targets,
                                    steps=args.steps)
    predicted = np.asarray(maps.predicted_classes(run.module, run.variables, tokens))
    shown = [['[CLS]', *text.split()][:int(np.sum(row != 0))] for text, row in zip(texts, tokens)]
    captions = [f'{name_of(p)}' + (f' ({name_of(labels[i])})' if labels is not None else '')
                for i, p in enumerate(predicted)]
    base = os.path.join(out, args.method)
    with open(f'{base}.json', 'w', encoding='utf-8') as f:
      json.dump([{'text': text, 'predicted': name_of(p), 'explained': name_of(t),
                  'tokens': toks, 'heat': h[:len(toks)].tolist()}
                 for text, p, t, toks, h in zip(texts, predicted, targets, shown, heat)], f,
                indent=1)
    written = [figures.plot_token_heat(shown, heat, captions, f'{base}.png'),
               figures.token_heat_html(shown, heat, captions, f'{base}.html'), f'{base}.json']
  else:
    raise InputError(f'{args.workdir} is a {run.card["task"]} run: explain works on image and '
                     'text classifiers')
  for caption, target in zip(captions, targets):
    print(f'{caption}: explained {name_of(int(target))}')
  print('wrote ' + ', '.join(written))
  return 0
