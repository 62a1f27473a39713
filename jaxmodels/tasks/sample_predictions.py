"""`report.num_test_predictions`: the summary records the final model's top-k predictions for
the first N test examples, in the form `jaxmodels predict --json` and the server's /predict
give them, so that a deployed model can be checked against the run that trained it."""
from jaxmodels.schema import Field, Schema, at_least
from jaxmodels.serve.artifact import DEFAULT_TOP_K, top_k
from jaxmodels.runs.extension import Extension


class SamplePredictions(Extension):
  """Adds 'test_predictions' to the summary of classification runs: for each of the first
  `report.num_test_predictions` test examples, its index, true label and top-k predictions
  ({'label', 'index', 'probability'}, most probable first)."""
  schema = Schema({
      'report.num_test_predictions': Field(
          16, "Record the top-5 predictions of the first N test examples in the summary "
          "(classifiers; 0: none).", resumable=True, **at_least(0)),
  })

  def report(self, ctx, test):
    count, names = ctx.config.report.num_test_predictions, ctx.data.info.get('class_names')
    if not count or not names:
      return {}
    inputs, labels = (a[:count] for a in ctx.data.test)
    logits = ctx.predict(inputs)  # Every process takes part.
    return {'test_predictions': [
        {'index': i, 'label': names[int(label)], 'top_k': row}
        for i, (label, row) in enumerate(zip(labels, top_k(logits, list(names), DEFAULT_TOP_K)))]}
