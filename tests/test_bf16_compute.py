"""bf16 products on XLA:CPU's bf16 instructions: the plain product's values, gradients as
float64 references rounded to bf16, and a bf16 GPT rewritten to run them."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels as jm
from jaxmodels.models import bf16_compute
from jaxmodels.models.fast_path import rewrite_for_cpu
from jaxmodels.models.layers import attention

BF16_RTOL = 2 ** -7  # Two roundings to bf16's 8-bit significand.

# (x shape, y shape, dimension numbers): a dense layer, a head projection (two contracted
# axes), a transposed operand, attention's batched products and batch axes in other places.
PRODUCTS = [
    ((6, 5, 12), (12, 20), (((2,), (0,)), ((), ()))),
    ((6, 5, 3, 4), (3, 4, 7), (((2, 3), (0, 1)), ((), ()))),
    ((9, 6), (9, 5), (((0,), (0,)), ((), ()))),
    ((2, 3, 5, 8), (2, 3, 6, 8), (((3,), (3,)), ((0, 1), (0, 1)))),
    ((2, 3, 5, 8), (2, 3, 8, 6), (((3,), (2,)), ((0, 1), (0, 1)))),
    ((5, 2, 8), (8, 5, 3), (((2,), (0,)), ((0,), (1,)))),
    ((3, 4, 5), (5, 3), (((0, 2), (1, 0)), ((), ()))),
]


def _bf16(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape).astype(jnp.bfloat16)


def _float64(a):
  return np.asarray(a.astype(jnp.float32), np.float64)


def _einsum_spec(x_ndim, y_ndim, dimension_numbers):
  """The einsum of a dot_general (batch, x free, y free output order), for numpy."""
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  letters = iter('abcdefghijklmnop')
  x_sub = [next(letters) for _ in range(x_ndim)]
  y_sub = [next(letters) for _ in range(y_ndim)]
  for i, j in zip((*x_contract, *x_batch), (*y_contract, *y_batch)):
    y_sub[j] = x_sub[i]
  out = ([x_sub[i] for i in x_batch] +
         [s for i, s in enumerate(x_sub) if i not in x_contract and i not in x_batch] +
         [s for j, s in enumerate(y_sub) if j not in y_contract and j not in y_batch])
  return f'{"".join(x_sub)},{"".join(y_sub)}->{"".join(out)}'


def _matrix_product_operand_types(hlo: str) -> list[list[str]]:
  """The element types of the operands of each dot without batch axes (a dense layer's
  products) in an optimised HLO module's text; names are looked up in the computation the
  dot is in."""
  types, found = {}, []
  for line in hlo.splitlines():
    if line.rstrip().endswith('{'):  # A computation starts: its own names.
      types = {}
    definition = re.match(r'\s*(?:ROOT )?(%\S+) = (\w+)\[', line)
    if definition:
      types[definition[1]] = definition[2]
    dot = re.search(r' dot\((%[^,]+), (%[^)]+)\)', line)
    if dot and 'lhs_batch_dims' not in line:
      found.append([types.get(dot[1]), types.get(dot[2])])
  return found


@pytest.mark.parametrize('x_shape,y_shape,dims', PRODUCTS)
def test_bf16_dot_general_equals_the_plain_product_and_its_gradients_to_bf16_rounding(
    x_shape, y_shape, dims):
  x, y = _bf16(0, x_shape), _bf16(1, y_shape)
  plain = jax.lax.dot_general(x, y, dims)
  ours = bf16_compute.dot_general(x, y, dims)
  assert ours.dtype == jnp.bfloat16 and ours.shape == plain.shape
  spec = _einsum_spec(len(x_shape), len(y_shape), dims)
  exact = np.einsum(spec, _float64(x), _float64(y))
  np.testing.assert_allclose(_float64(ours), exact, rtol=BF16_RTOL, atol=1e-2)
  np.testing.assert_allclose(_float64(ours), _float64(plain), rtol=BF16_RTOL, atol=1e-2)

  g = _bf16(2, plain.shape)
  _, vjp = jax.vjp(lambda x, y: bf16_compute.dot_general(x, y, dims), x, y)
  dx, dy = vjp(g)
  assert dx.dtype == dy.dtype == jnp.bfloat16
  # The exact gradients (float64) through numpy's einsum, and float32 jax's.
  exact_dx, exact_dy = jax.vjp(
      lambda x, y: jnp.einsum(spec, x, y, precision='highest'),
      _float64(x).astype(np.float32), _float64(y).astype(np.float32))[1](
          _float64(g).astype(np.float32))
  for ours_grad, exact_grad in ((dx, exact_dx), (dy, exact_dy)):
    np.testing.assert_allclose(_float64(ours_grad), exact_grad, rtol=BF16_RTOL, atol=2e-2)


def test_a_float32_result_keeps_float32_and_its_gradient_takes_bf16_compute():
  """Attention's logits: bf16 operands, a float32 result (as jax.nn.dot_product_attention
  asks for); the gradient enters the products rounded to bf16, as under PyTorch's autocast."""
  dims = (((1,), (0,)), ((), ()))
  x, y = _bf16(0, (16, 32)), _bf16(1, (32, 8))
  ours = bf16_compute.dot_general(x, y, dims, out_dtype=jnp.float32)
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, _float64(x) @ _float64(y), rtol=1e-6, atol=1e-5)
  g = jax.random.normal(jax.random.PRNGKey(2), (16, 8))
  dx, dy = jax.vjp(lambda x, y: bf16_compute.dot_general(x, y, dims, out_dtype=jnp.float32),
                   x, y)[1](g)
  g16 = _float64(g.astype(jnp.bfloat16))
  np.testing.assert_allclose(_float64(dx), g16 @ _float64(y).T, rtol=BF16_RTOL, atol=2e-2)
  np.testing.assert_allclose(_float64(dy), _float64(x).T @ g16, rtol=BF16_RTOL, atol=2e-2)


@pytest.mark.parametrize('causal,length', [(True, 100), (False, 64)])
def test_bf16_attention_equals_jax_dot_product_attention_to_bf16_rounding(causal, length):
  q, k, v, g = (_bf16(i, (2, length, 3, 16)) for i in range(4))
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)
  ours = lambda q, k, v: attention(q, k, v, causal)
  assert ours(q, k, v).dtype == jnp.bfloat16
  np.testing.assert_allclose(_float64(ours(q, k, v)), _float64(reference(q, k, v)),
                             rtol=2 * BF16_RTOL, atol=2e-2)
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * g),
                             argnums=(0, 1, 2))(q, k, v)
  # The float32 computation's gradients: ours are its bf16-rounded products.
  f32 = lambda f: lambda *a: f(*(t.astype(jnp.float32) for t in a))
  for a, b in zip(grads(ours), grads(f32(reference))):
    scale = np.max(np.abs(_float64(b)))
    np.testing.assert_allclose(_float64(a), _float64(b), atol=0.03 * scale)


def test_the_rewrite_runs_a_bf16_gpts_products_on_bf16_operands_and_sums_in_float32():
  """A bf16 GPT's loss and gradient, rewritten: no product with a bf16 result and no bf16
  sum is left (the plain model's gradient has both: its bias gradients), and XLA:CPU's
  optimised program multiplies bf16 operands in every dense product (the plain program
  converts them to float32 first). The loss and the gradients agree with the unrewritten
  bf16 model to bf16 rounding."""
  model = jm.models.GPT(vocab_size=16, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=64,
                        max_length=8, dropout=0.0, dtype=jnp.bfloat16)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 8), 0, 16)
  params = model.init(jax.random.PRNGKey(1), tokens)['params']
  apply = lambda params: model.apply({'params': params}, tokens)
  loss = lambda f: lambda p: jnp.mean(jax.nn.log_softmax(f(p).astype(jnp.float32))[..., 0])
  rewritten = rewrite_for_cpu(apply)
  bf16_product = re.compile(r'bf16\[[\d,]*\] = dot_general\[')
  bf16_sum = re.compile(r'bf16\[[\d,]*\] = reduce_sum\[')
  plain_jaxpr, jaxpr = (str(jax.make_jaxpr(jax.value_and_grad(loss(f)))(params))
                        for f in (apply, rewritten))
  assert bf16_product.search(plain_jaxpr) and bf16_sum.search(plain_jaxpr)
  assert 'bf16[' in jaxpr and not bf16_product.search(jaxpr) and not bf16_sum.search(jaxpr)
  plain_hlo, hlo = (jax.jit(jax.value_and_grad(loss(f))).lower(params).compile().as_text()
                    for f in (apply, rewritten))
  assert all(t == ['f32', 'f32'] for t in _matrix_product_operand_types(plain_hlo))
  operand_types = _matrix_product_operand_types(hlo)
  assert len(operand_types) >= 12 and all(t == ['bf16', 'bf16'] for t in operand_types)

  (ours, ours_grads), (plain, plain_grads) = (
      jax.value_and_grad(loss(f))(params) for f in (rewritten, apply))
  np.testing.assert_allclose(ours, plain, rtol=2e-2)
  plain_grads = dict(jax.tree_util.tree_leaves_with_path(plain_grads))
  for path, a in jax.tree_util.tree_leaves_with_path(ours_grads):
    b = np.asarray(plain_grads[path])
    np.testing.assert_allclose(a, b, atol=0.05 * np.max(np.abs(b)) + 1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_broadcast_to_sums_its_gradient_in_float32():
  """A bias (1, 1, E) and a scalar broadcast over (B, T, E): the gradient is the float64 sum
  rounded once to bf16 (relative error at most 2^-8), where the plain broadcast's bf16 sum
  is off by several times that."""
  g = jax.random.uniform(jax.random.PRNGKey(0), (16, 256, 8)).astype(jnp.bfloat16)
  for x in (jnp.zeros((1, 1, 8), jnp.bfloat16), jnp.zeros((), jnp.bfloat16)):
    axes = tuple(i for i in range(g.ndim) if x.ndim == 0 or x.shape[i] == 1)
    exact = _float64(g).sum(axes, keepdims=x.ndim > 0)
    errors = {}
    for name, broadcast in (('ours', bf16_compute.broadcast_to), ('plain', jnp.broadcast_to)):
      (grad,) = jax.vjp(lambda x, broadcast=broadcast: broadcast(x, g.shape), x)[1](g)
      assert grad.shape == x.shape and grad.dtype == jnp.bfloat16
      errors[name] = np.max(np.abs(_float64(grad) - exact) / exact)
    assert errors['ours'] <= 2 ** -8 < 3 * 2 ** -8 < errors['plain'], errors
    np.testing.assert_array_equal(bf16_compute.broadcast_to(x, g.shape), jnp.zeros(g.shape))


def test_the_rewrite_broadcasts_variables_and_leaves_literals_alone():
  """A bias (1, 4) added to (3, 4) next to a literal scale (2.0) and a constant: the rewritten
  function's value and gradients are the plain ones (small integers: exact in bf16)."""
  def f(bias, x):
    y = bias * 2.0 + x - bias
    return y.astype(jnp.float32).sum() + (jnp.full((1, 4), 3, jnp.bfloat16) * bias).sum()
  bias, x = jnp.ones((1, 4), jnp.bfloat16), jnp.ones((3, 4), jnp.bfloat16)
  assert 'custom_vjp_call' in str(jax.make_jaxpr(rewrite_for_cpu(f))(bias, x))
  assert rewrite_for_cpu(f)(bias, x) == f(bias, x) == 36
  grads = lambda f: jax.grad(f, (0, 1))(bias, x)
  for ours, plain in zip(grads(rewrite_for_cpu(f)), grads(f)):
    np.testing.assert_array_equal(ours, plain)
