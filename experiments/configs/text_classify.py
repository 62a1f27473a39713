"""Text classification: a bidirectional LSTM (`--config.model.name=bert` for the
Transformer encoder) on imdb_reviews, or offline on Debian's fortunes categories."""
from jaxmodels.tasks import text_classification


def get_config():
  return text_classification.default_config()
