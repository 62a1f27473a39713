"""What the classification tasks (images, texts) share: label smoothing, accuracy metrics
(a confusion matrix on the test pass), and the report: per-class precision, recall and F1,
the sklearn-style text report and a confusion-matrix plot."""
import os

from jaxmodels import report
from jaxmodels import train as train_lib
from jaxmodels.schema import Field, Schema, share

SCHEMA = Schema({
    'train.label_smoothing': Field(0.0, 'Label smoothing of the cross-entropy.',
                                   **share(zero_ok=True)),
})


def loss(config):
  return train_lib.classification_loss(config.train.label_smoothing)


def metrics(data, for_eval: bool):
  """Loss and accuracy (top-5 too above 10 classes); the test pass adds the confusion matrix."""
  num_classes = len(data.info['class_names'])
  return train_lib.classification_metrics(num_classes, top_k=5 if num_classes > 10 else 0,
                                          with_confusion=for_eval)


def report_scores(ctx, test: dict) -> dict:
  """Summary entries from the test metrics: macro / weighted F1 and the classification report;
  writes the report to TensorBoard and confusion_matrix.png."""
  confusion = test.pop('confusion')
  names = ctx.data.info['class_names']
  text = train_lib.classification_report(confusion, names)
  ctx.writer.write_text(int(ctx.state.step), 'classification_report', text)
  if ctx.is_main:
    report.plot_confusion_matrix(confusion, names,
                                 os.path.join(ctx.workdir, 'confusion_matrix.png'))
  scores = train_lib.precision_recall_f1(confusion)
  return {'test': {'macro_f1': scores['macro_f1'], 'weighted_f1': scores['weighted_f1']},
          'classification_report': text}
