"""Byte-level GPT (4 layers, 256 wide, rotary positions) on tiny_shakespeare, or offline on a
local text (--config.data.text_file), by default Debian's fortunes when installed."""
from jaxmodels.tasks import language_model


def get_config():
  return language_model.default_config()
