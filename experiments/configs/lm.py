"""Byte-level GPT (4 layers, 256 wide, rotary positions) on tiny_shakespeare, or offline on a
local text (--config.data.text_file / text_dir), by default Debian's fortunes when installed."""
from jaxmodels import cli
from jaxmodels.tasks import language_model


def get_config():
  config = cli.default_config(language_model.TASK)
  config.model = dict(name='gpt', num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024,
                      dropout=0.1, positions='rotary', tie_embeddings=True, scan_layers=False,
                      remat=False)
  return config
