"""Text classification: a bidirectional LSTM (`--config.model.name=transformer` for the
Transformer encoder) on imdb_reviews, or offline on Debian's fortunes categories."""
from jaxmodels import cli
from jaxmodels.tasks import text_classification


def get_config():
  config = cli.default_config(text_classification.TASK)
  config.model = dict(name='lstm', embed_dim=128, hidden=128, bidirectional=True, num_layers=2,
                      num_heads=4, mlp_dim=256, dropout=0.3)
  return config
