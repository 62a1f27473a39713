"""The explanation part of a run's report: saliency.png, a grid of test images each beside
its saliency map for the predicted class (image runs; `explain.num_images` of them)."""
import os

from jaxmodels import parallel
from jaxmodels.errors import ConfigError, InputError
from jaxmodels.explain import figures, maps
from jaxmodels.schema import Field, Schema, at_least, one_of
from jaxmodels.runs.extension import Extension

SALIENCY_FILE = 'saliency.png'


class SaliencyReport(Extension):
  """Adds saliency.png to the report of an image run (explain.num_images > 0)."""
  schema = Schema({
      'explain.num_images': Field(16, 'Test images in saliency.png, each beside its saliency '
                                  'map for the predicted class (image runs; 0: none).',
                                  resumable=True, **at_least(0)),
      'explain.method': Field('saliency', 'The map of saliency.png: '
                              f'{", ".join(maps.IMAGE_METHODS)}.', resumable=True,
                              **one_of(*maps.IMAGE_METHODS)),
      'explain.steps': Field(32, 'Integrated gradients: points on the path from a black image.',
                             resumable=True, **at_least(1)),
  })

  def model(self, config, module):
    if config.explain.method == 'attention_rollout' and not hasattr(module, 'patch_size'):
      raise ConfigError(f'explain.method=attention_rollout needs a ViT, not {config.model.name}',
                        key='explain.method')
    return module

  def report(self, ctx, test: dict) -> dict:
    count = ctx.config.explain.num_images
    if not count or ctx.input_spec.get('kind') != 'image':
      return {}
    images, labels = (a[:count] for a in ctx.data.test)
    state = parallel.host_copy(ctx.state)  # Every process takes part; each computes alone.
    variables = {'params': state.params, **state.model_state}
    try:
      heat, predicted = maps.image_maps(ctx.module, variables, ctx.input_spec, images,
                                        ctx.config.explain.method, steps=ctx.config.explain.steps)
    except InputError as e:  # A method this model has no layer for: the run still reports.
      ctx.say(f'note: no {SALIENCY_FILE}: {e}')
      return {}
    if ctx.is_main:
      names = ctx.data.info.get('class_names') or [str(i) for i in range(int(predicted.max()) + 1)]
      titles = [f'{names[p]} ({names[t]})' for p, t in zip(predicted, labels)]
      figures.plot_image_maps(images, heat, titles, os.path.join(ctx.workdir, SALIENCY_FILE),
                            method=ctx.config.explain.method)
    return {}
