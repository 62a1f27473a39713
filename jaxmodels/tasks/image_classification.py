"""Image classification: tfds or local files (or scikit-learn's digits) -> augmentation and
normalisation -> a CNN, ResNet or ViT -> test metrics, classification report, confusion
matrix and a grid of predictions. `experiments/{mnist,fashion_mnist,cifar10}.py` run it."""
import os


from jaxmodels import data as data_lib
from jaxmodels import report
from jaxmodels.schema import Field, Schema, at_least, one_of, share
from jaxmodels.tasks import classification
from jaxmodels.tasks.spec import Task, TaskData

SCHEMA = classification.SCHEMA + Schema({
    'data.name': Field('mnist', 'mnist, fashion_mnist, cifar10, digits, a tfds image dataset, '
                       'or any name for local train.npz / test.npz files.'),
    'data.source': Field('auto', "'auto': data.local_dir, a prepared tfds copy, local files, a "
                         "download; 'local'; 'tfds'.", resumable=True,
                         **one_of('auto', 'local', 'tfds')),
    'data.local_dir': Field('', 'IDX *-ubyte.gz, CIFAR-10 *.bin, or train.npz / test.npz files.',
                            resumable=True),
    'data.data_dir': Field('', "tfds data_dir ('': tfds' default).", resumable=True),
    'data.fallback': Field('none', "When the dataset cannot be had: 'digits' trains on "
                           "scikit-learn's digits instead, laid out as MNIST's 28x28 (and says "
                           "so); 'none' stops with an error.", **one_of('none', 'digits')),
    'augment.flip': Field(False, 'Random horizontal flips.'),
    'augment.crop_padding': Field(0, 'Random crops after padding N pixels.', **at_least(0)),
    'augment.rotation': Field(0.0, 'Random rotations up to N degrees.', **at_least(0)),
    'augment.shift': Field(0.0, 'Random shifts up to this share.', **share(zero_ok=True)),
    'augment.zoom': Field(0.0, 'Random zoom up to 1 +- this.', **share(zero_ok=True)),
    'report.num_prediction_images': Field(25, 'Images in predictions.png.', resumable=True),
})


def load_data(config) -> TaskData:
  """The dataset, or (data.fallback='digits') scikit-learn's digits when it cannot be had."""
  cfg, note = config.data, ''
  try:
    dataset = data_lib.load_dataset(cfg.name, source=cfg.source, local_dir=cfg.local_dir or None,
                                    data_dir=cfg.data_dir or None)
  except data_lib.DataUnavailableError as e:
    if cfg.fallback != 'digits':
      e.key = 'data.local_dir'
      raise
    note = (f'note: no {cfg.name} here (no network, no local files): training on scikit-learn\'s '
            f'digits instead. To use {cfg.name}, set data.local_dir to its files; '
            'data.fallback=none requires it.')
    dataset = data_lib.load_digits(like_mnist=True)
  return TaskData((dataset.train_images, dataset.train_labels), (dataset.test_images,
                  dataset.test_labels), dataset.source, 'digits' if note else cfg.name,
                  info={'class_names': dataset.class_names}, description=note)


def inputs(config, data: TaskData) -> dict:
  """Images as the model takes them: this shape, pixels in 0..255 normalised by these stats."""
  mean, std = data_lib.channel_stats(data.train[0])
  return {'kind': 'image', 'shape': list(data.train[0].shape[1:]), 'mean': mean.tolist(),
          'std': std.tolist()}


def report_predictions(ctx, test: dict) -> dict:
  """The classification scores, plus predictions.png: test images titled 'pred (true)'."""
  images, labels = (a[:ctx.config.report.num_prediction_images] for a in ctx.data.test)
  predictions = ctx.predict(images).argmax(-1)  # Every process takes part.
  if ctx.is_main:
    report.plot_predictions(images, labels, predictions, ctx.data.info['class_names'],
                            os.path.join(ctx.workdir, 'predictions.png'))
  return classification.report_scores(ctx, test)


MODELS = ('mlp', 'small_cnn', 'three_conv_cnn', 'cifar10_cnn', 'convnet', 'resnet', 'vit')
TASK = Task('image_classification', SCHEMA, MODELS, load_data,
            model_kwargs=lambda config, data: {'num_classes': len(data.info['class_names'])},
            loss=classification.loss, metrics=classification.metrics, report=report_predictions,
            inputs=inputs,
            augment=lambda config: data_lib.make_augment(**config.augment.to_dict()),
            defaults={'model.name': 'small_cnn', 'train.num_epochs': 10.0,
                      'optimizer.warmup_epochs': 1.0})

