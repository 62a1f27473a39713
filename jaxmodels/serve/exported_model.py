"""An exported model, loaded, and its top-k records for examples: what `jaxmodels predict`
prints and the server's /predict returns."""
from jaxmodels.errors import InputError
from jaxmodels.serve import artifact


def load_exported(directory: str) -> artifact.Artifact:
  """The artifact in `directory`; InputError if it is not one."""
  try:
    return artifact.Artifact(directory)
  except FileNotFoundError as e:
    raise InputError(f'{directory} is not an exported model ({e.filename} is missing): '
                     'run `export` first', key='directory') from None


def predictions(model: artifact.Artifact, examples, k: int) -> list[list[dict]]:
  """The top-k records of each example (N, *input shape), as /predict gives them."""
  return artifact.top_k(model.logits(examples), model.class_names, k)
