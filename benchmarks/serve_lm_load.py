"""Load test of `jaxmodels serve` on a language-model artifact, on loopback: N concurrent
clients stream completions (prompts of mixed lengths, T tokens each) from
/v1/completions, against one client alone on the same server, and against the model's own
`models.gpt.generate` in-process (no HTTP, no engine: the limit) at batch 1 and batch N.

  python benchmarks/serve_lm_load.py ARTIFACT [--clients 16] [--tokens 64] [--rounds 2]
                                     [--quick] [--json OUT]

Prints the CPU, aggregate tokens/s, time to first token and the gap between streamed chunks
(p50/p99), errors and XLA compilations after warm-up (the server's /metrics), and the ratios
side by side. The in-process baseline rebuilds the model from what the artifact was exported
from (its manifest's run.workdir, or its hf: directory); without it, it is left out.
--quick: 3 clients, 8 tokens, 1 round (a smoke run).
"""
import argparse
import http.client
import json
import os
import threading
import time

import numpy as np

from serve_load import cpu_model, get, metric, start_server

TEXT = ('It was the best of times, it was the worst of times, it was the age of wisdom, it was '
        'the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, '
        'it was the season of Light, it was the season of Darkness, it was the spring of hope.')


def prompts(count: int, longest: int) -> list[str]:
  """Mixed lengths: from 4 characters up to `longest`, spread evenly, cut from TEXT."""
  lengths = np.linspace(4, max(4, longest), count).astype(int) if count > 1 else [longest]
  return [TEXT[i % 40:][:n] for i, n in enumerate(lengths)]


def stream(port: int, body: dict) -> dict:
  """One streamed completion: seconds to the first text, the gaps between text chunks, the
  tokens (the usage chunk), or an error."""
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=300)
  start = time.perf_counter()
  try:
    connection.request('POST', '/v1/completions', json.dumps(body),
                       {'Content-Type': 'application/json'})
    response = connection.getresponse()
    if response.status != 200:
      return {'error': f'{response.status} {response.read()[:200]!r}'}
    first, last, gaps, tokens, done = None, None, [], 0, False
    while line := response.readline():
      if not line.startswith(b'data: '):
        continue
      if line.startswith(b'data: [DONE]'):
        done = True
        break
      chunk = json.loads(line[6:])
      if 'error' in chunk:
        return {'error': chunk['error']['message']}
      if chunk.get('usage'):
        tokens = chunk['usage']['completion_tokens']
      if chunk['choices'] and chunk['choices'][0]['text']:
        now = time.perf_counter()
        if first is None:
          first = now - start
        else:
          gaps.append(now - last)
        last = now
    if not done:
      return {'error': 'the stream ended without [DONE]'}
    return {'first': first, 'gaps': gaps, 'tokens': tokens, 'seconds': time.perf_counter() - start}
  except OSError as e:
    return {'error': f'{type(e).__name__}: {e}'}
  finally:
    connection.close()


def load(port: int, model: str, texts: list[str], clients: int, tokens: int,
         rounds: int) -> dict:
  """`clients` threads, each streaming `rounds` completions back to back."""
  results, lock = [], threading.Lock()

  def client(index: int):
    mine = []
    for r in range(rounds):
      mine.append(stream(port, {
          'model': model, 'prompt': texts[(index + r * clients) % len(texts)],
          'max_tokens': tokens, 'temperature': 1.0, 'seed': index * rounds + r, 'stream': True,
          'stream_options': {'include_usage': True}}))
    with lock:
      results.extend(mine)

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - start
  ok = [r for r in results if 'error' not in r]
  firsts = np.array([r['first'] for r in ok if r['first'] is not None]) * 1000
  gaps = np.array([g for r in ok for g in r['gaps']]) * 1000
  generated = sum(r['tokens'] for r in ok)
  pct = lambda a, q: float(np.percentile(a, q)) if len(a) else None
  return {'clients': clients, 'requests': len(results), 'tokens': generated,
          'seconds': elapsed, 'tokens_per_s': generated / elapsed,
          'ttft_p50_ms': pct(firsts, 50), 'ttft_p99_ms': pct(firsts, 99),
          'gap_p50_ms': pct(gaps, 50), 'gap_p99_ms': pct(gaps, 99),
          'errors': len(results) - len(ok),
          'error_examples': [r['error'] for r in results if 'error' in r][:3]}


def serve_and_load(directory: str, clients: int, tokens: int, rounds: int) -> dict:
  process, port = start_server(directory, '--max-queue', str(max(64, clients)))
  try:
    ready = json.loads(get(port, '/readyz')[1])
    model = json.loads(get(port, '/v1/models')[1])['data'][0]['id']
    texts = prompts(max(clients, 8), min(ready['max_length'] - tokens, 100))
    load(port, model, texts, min(clients, ready['slots']), 4, 1)  # The HTTP path warm too.
    alone = load(port, model, texts, 1, tokens, rounds)
    together = load(port, model, texts, clients, tokens, rounds)
    return {'slots': ready['slots'], 'alone': alone, 'together': together,
            'compilations_after_warmup': metric(port, 'jaxmodels_compilations_after_warmup_total'),
            'server_tokens_total': metric(port, 'jaxmodels_lm_tokens_generated_total')}
  finally:
    process.terminate()
    process.wait(timeout=60)


def in_process(directory: str, batch_sizes: tuple[int, ...], tokens: int,
               repeats: int = 3) -> dict | None:
  """`models.gpt.generate` on the run the artifact came from: tokens/s at each batch size,
  compile excluded (prompt of 32 tokens, greedy)."""
  import jax

  from jaxmodels import models, pretrained
  from jaxmodels.runs import TrainedRun
  with open(os.path.join(directory, 'manifest.json'), encoding='utf-8') as f:
    run = json.load(f)['run']
  workdir, init_from = run.get('workdir'), run.get('init_from') or ''
  if workdir and os.path.isdir(workdir):
    trained = TrainedRun.load(workdir)
    module, variables = trained.module, trained.variables
  elif init_from.startswith('hf:') and os.path.isdir(init_from[3:]):
    module, variables = pretrained.load_pretrained(init_from[3:])
  else:
    return None
  params = jax.device_put(variables['params'])
  prompt_length = min(32, module.max_length - tokens)
  out = {}
  for batch in batch_sizes:
    prompt = np.resize(np.frombuffer(TEXT.encode(), np.uint8).astype(np.int32),
                       (batch, prompt_length))
    generate = lambda prompt=prompt: models.generate(
        module, params, prompt, jax.random.key(0), max_new_tokens=tokens,
        temperature=0.0).block_until_ready()
    generate()  # Compiles.
    start = time.perf_counter()
    for _ in range(repeats):
      generate()
    elapsed = time.perf_counter() - start
    out[batch] = {'tokens_per_s': repeats * batch * tokens / elapsed,
                  'ms_per_token_step': 1000 * elapsed / (repeats * tokens)}
  return out


def print_load(name: str, r: dict) -> None:
  print(f'{name:<22} {r["tokens_per_s"]:8.1f} tokens/s  ({r["tokens"]} tokens, '
        f'{r["requests"]} requests in {r["seconds"]:.2f} s); first token p50 '
        f'{r["ttft_p50_ms"]:.1f} ms p99 {r["ttft_p99_ms"]:.1f} ms; between chunks p50 '
        f'{r["gap_p50_ms"]:.2f} ms p99 {r["gap_p99_ms"]:.2f} ms; errors {r["errors"]}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('artifact', help='a language-model artifact (`jaxmodels export --slots`)')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--tokens', type=int, default=64, help='max_tokens of every request')
  parser.add_argument('--rounds', type=int, default=2, help='requests each client sends')
  parser.add_argument('--quick', action='store_true', help='3 clients, 8 tokens, 1 round')
  parser.add_argument('--json', default=None, help='also write the results here')
  args = parser.parse_args()
  if args.quick:
    args.clients, args.tokens, args.rounds = 3, 8, 1
  results = {'cpu': cpu_model(), 'clients': args.clients, 'tokens': args.tokens,
             'rounds': args.rounds}
  print(f'cpu: {results["cpu"]}')
  results.update(serve_and_load(args.artifact, args.clients, args.tokens, args.rounds))
  alone, together = results['alone'], results['together']
  print(f'server ({results["slots"]} slots), {args.tokens} tokens a request:')
  print_load('1 client alone', alone)
  print_load(f'{args.clients} clients at once', together)
  results['in_process'] = in_process(args.artifact, (1, args.clients), args.tokens)
  speedup = together['tokens_per_s'] / alone['tokens_per_s']
  print(f'{args.clients} clients / 1 client: {speedup:.2f}x aggregate tokens/s')
  if results['in_process'] is None:
    print('in-process generate: skipped (what the artifact was exported from is not here)')
  else:
    one, many = results['in_process'][1], results['in_process'][args.clients]
    print(f'in-process generate  batch 1: {one["tokens_per_s"]:8.1f} tokens/s; batch '
          f'{args.clients}: {many["tokens_per_s"]:8.1f} tokens/s')
    print(f'server / in-process: 1 client {alone["tokens_per_s"] / one["tokens_per_s"]:.2f}x '
          f'of batch 1; {args.clients} clients '
          f'{together["tokens_per_s"] / many["tokens_per_s"]:.2f}x of batch {args.clients}')
  errors = alone['errors'] + together['errors']
  print(f'errors: {errors}; compilations after warm-up: '
        f'{results["compilations_after_warmup"]:.0f}')
  results['speedup'] = speedup
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
