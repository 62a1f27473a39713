"""ResNet, ViT and GPT take a training step on 8 simulated devices with their params really
split (FSDP, and tensor parallelism from the Transformers' logical axis names), and
give the 1-device numbers."""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels import parallel
from jaxmodels.models import GPT, ResNet, ViT
from jaxmodels.parallel import LOGICAL_AXIS_RULES


def _one_step(module, batch, mesh, loss_fn, rules=(), fsdp_min_size=2**10):
  model = jm.linen_model(module)
  tx = optax.sgd(0.1, momentum=0.9)
  init = lambda r: jm.create_train_state(model, tx, r, batch['inputs'][:1])
  step = jm.make_train_step(model.apply, loss_fn, tx)
  expected, _ = jax.jit(step)(jax.jit(init)(jax.random.PRNGKey(0)), batch)
  state, shardings = parallel.create_sharded_state(init, jax.random.PRNGKey(0), mesh, rules,
                                                   fsdp_min_size=fsdp_min_size)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    sharded, _ = parallel.jit_train_step(step, shardings, mesh)(state,
                                                                parallel.shard_batch(batch, mesh))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               jax.device_get(sharded.params), jax.device_get(expected.params))
  return state, sharded


def _split_leaves(state, min_ways):
  """Param paths whose every shard is at most 1/min_ways of the whole."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    shard = leaf.addressable_shards[0].data
    if shard.size * min_ways <= leaf.size:
      out.append(parallel.leaf_path(path))
  return out


def _images(n=16, size=16, channels=3):
  rng = np.random.default_rng(0)
  return {'inputs': rng.normal(size=(n, size, size, channels)).astype(np.float32),
          'labels': rng.integers(0, 10, n).astype(np.int32)}


@pytest.mark.parametrize('module', [ResNet(stage_sizes=(1, 1), widths=(16, 32)),
                                    ViT(patch_size=4, num_layers=2, embed_dim=32, mlp_dim=64,
                                        dropout=0.0)], ids=['resnet', 'vit'])
def test_vision_models_under_fsdp(module):
  mesh = parallel.make_mesh({'fsdp': 8})
  state, sharded = _one_step(module, _images(), mesh, jm.classification_loss())
  split = _split_leaves(sharded, 8)
  big = [parallel.leaf_path(p) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
         if x.size >= 2**10]
  assert big and set(big) <= set(split), set(big) - set(split)  # Every large leaf split 8 ways.


def test_gpt_with_fsdp_and_tensor_parallel_from_logical_names():
  module = GPT(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_length=16,
               dropout=0.0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (8, 17)).astype(np.int32)
  batch = {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'model': 2})
  rules = parallel.logical_rules(module, batch['inputs'][:1], LOGICAL_AXIS_RULES)
  loss = lambda logits, batch: jm.softmax_cross_entropy(logits, batch['labels'])
  _, sharded = _one_step(module, batch, mesh, loss, rules)
  query = sharded.params['decoder']['layer0']['attention']['query']['kernel']  # (embed, heads, kv)
  assert query.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'model', None)
  assert query.addressable_shards[0].data.shape == (16, 2, 8)
  mlp_in = sharded.params['decoder']['layer0']['mlp']['Dense_0']['kernel']  # (embed, mlp)
  assert mlp_in.addressable_shards[0].data.shape == (16, 32)
