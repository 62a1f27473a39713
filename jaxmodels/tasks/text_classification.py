"""Text classification: tfds `imdb_reviews`, or one text file per class (by default Debian's
fortunes categories) -> word ids (or a pretrained tokenizer's) -> BiLSTM, BERT-style
encoder or BERT -> test metrics, classification report and confusion matrix."""
import os

from jaxmodels import data as data_lib
from jaxmodels.schema import Field, Schema, at_least, one_of, share
from jaxmodels.tasks import classification
from jaxmodels.tasks.spec import Task, TaskData
from jaxmodels.tasks.text_encoding import TextEncoder

SCHEMA = classification.SCHEMA + Schema({
    'data.source': Field('auto', "'auto': data.local_dir, else tfds, else Debian's fortunes; "
                         "'tfds'; 'local'.", resumable=True, **one_of('auto', 'tfds', 'local')),
    'data.tfds_name': Field('imdb_reviews', 'tfds dataset with text and label features.'),
    'data.local_dir': Field('', 'One text file per class (fortune files, or one example per '
                            'line).', resumable=True),
    'data.categories': Field(('computers', 'politics', 'science', 'literature', 'law', 'food'),
                             'The class files of data.local_dir (empty: all).'),
    'data.test_fraction': Field(0.2, 'Local sets have no test split: this seeded share is held '
                                'out.', **share()),
    'data.max_length': Field(128, 'Tokens per example, [CLS] included.', **at_least(2)),
    'data.vocab_size': Field(20_000, 'Most frequent training words kept.', **at_least(4)),
    'data.min_count': Field(2, 'Words seen fewer times are unknown.', **at_least(1)),
    'data.tokenizer': Field('', "A pretrained model's tokenizer.json (or its directory): texts "
                            "are encoded by it as they are; '': a word vocabulary."),
})


def read_texts(config):
  """(train texts, train labels, test texts, test labels, class names, source)."""
  cfg = config.data
  if cfg.source == 'tfds' or (cfg.source == 'auto' and not cfg.local_dir):
    try:
      return (*data_lib.load_tfds_texts(cfg.tfds_name), f'tfds:{cfg.tfds_name}')
    except data_lib.DataUnavailableError as e:
      if cfg.source == 'tfds' or not os.path.isdir(data_lib.text.FORTUNES_DIR):
        e.key = 'data.local_dir'
        raise
  directory = cfg.local_dir or data_lib.text.FORTUNES_DIR
  texts, labels, names = data_lib.load_labelled_texts(directory, cfg.categories or None)
  return (*data_lib.split_examples(texts, labels, cfg.test_fraction, config.seed), names,
          f'local:{directory}')


def load_data(config) -> TaskData:
  cfg = config.data
  train_texts, train_labels, test_texts, test_labels, names, source = read_texts(config)
  val = None
  if cfg.val_fraction:  # Held out before the vocabulary is built: it must not see them.
    train_texts, train_labels, val_texts, val_labels = data_lib.split_examples(
        train_texts, train_labels, cfg.val_fraction, config.seed)
  encoder = TextEncoder(config, train_texts)
  if cfg.val_fraction:
    val = (encoder.encode(val_texts), val_labels)
  return TaskData((encoder.encode(train_texts), train_labels),
                  (encoder.encode(test_texts), test_labels), source,
                  cfg.tfds_name if source.startswith('tfds') else 'labelled texts', val=val,
                  info={'class_names': names, **encoder.info}, description=encoder.description,
                  tokens_per_example=cfg.max_length)


TASK = Task('text_classification', SCHEMA, ('lstm', 'transformer', 'bert_classifier'), load_data,
            model_kwargs=lambda config, data: {'num_classes': len(data.info['class_names']),
                                               'vocab_size': data.info['vocab_size'],
                                               'pad_id': data.info['pad_id'],
                                               'max_length': config.data.max_length},
            loss=classification.loss, metrics=classification.metrics,
            report=classification.report_scores,
            inputs=lambda config, data: data.info['input_spec'],
            defaults={'model.name': 'lstm', 'train.batch_size': 64, 'train.num_epochs': 8.0,
                      'train.log_every_steps': 50, 'train.eval_batch_size': 256,
                      'train.steps_per_dispatch': 1, 'optimizer.learning_rate': 2e-3,
                      'optimizer.warmup_epochs': 0.5, 'optimizer.weight_decay': 1e-2,
                      'optimizer.clip_norm': 1.0})
