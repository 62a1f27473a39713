"""The server's Prometheus text-format metrics: requests by status, latency and batch-size
histograms, requests in flight, and XLA compilations (counted by a jax.monitoring listener,
so a compilation after warm-up shows up whatever caused it)."""
import bisect
import threading

import jax

COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
  def __init__(self, bounds):
    self.bounds, self.counts, self.sum, self.count = tuple(bounds), [0] * len(bounds), 0.0, 0

  def observe(self, value: float) -> None:
    index = bisect.bisect_left(self.bounds, value)
    if index < len(self.counts):
      self.counts[index] += 1
    self.sum, self.count = self.sum + value, self.count + 1

  def lines(self, name: str) -> list[str]:
    cumulative, out = 0, []
    for bound, count in zip(self.bounds, self.counts):
      cumulative += count
      out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
    return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f'{name}_sum {self.sum:.6f}',
                  f'{name}_count {self.count}']


class Metrics:
  """Thread-safe counters; `text()` is the /metrics page. `warmed_up()` marks the end of
  warm-up: compilations after it are counted separately."""

  def __init__(self, batch_buckets):
    self._lock = threading.Lock()
    self.requests: dict[int, int] = {}
    self.in_flight = self.compilations = self.compilations_after_warmup = 0
    self.latency, self.batch_size = Histogram(LATENCY_BUCKETS), Histogram(batch_buckets)
    self._warm = False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    if event == COMPILE_EVENT:
      with self._lock:
        self.compilations += 1
        self.compilations_after_warmup += self._warm

  def warmed_up(self) -> None:
    self._warm = True

  def started(self) -> None:
    with self._lock:
      self.in_flight += 1

  def finished(self, status: int, seconds: float) -> None:
    with self._lock:
      self.in_flight -= 1
      self.requests[status] = self.requests.get(status, 0) + 1
      self.latency.observe(seconds)

  def batch(self, size: int) -> None:
    with self._lock:
      self.batch_size.observe(size)

  def text(self) -> str:
    with self._lock:
      errors = sum(n for status, n in self.requests.items() if status >= 400)
      lines = ['# TYPE jaxmodels_requests_total counter']
      lines += [f'jaxmodels_requests_total{{status="{s}"}} {n}'
                for s, n in sorted(self.requests.items())]
      lines += ['# TYPE jaxmodels_request_errors_total counter',
                f'jaxmodels_request_errors_total {errors}',
                '# TYPE jaxmodels_requests_in_flight gauge',
                f'jaxmodels_requests_in_flight {self.in_flight}',
                '# TYPE jaxmodels_request_latency_seconds histogram',
                *self.latency.lines('jaxmodels_request_latency_seconds'),
                '# TYPE jaxmodels_batch_size histogram',
                *self.batch_size.lines('jaxmodels_batch_size'),
                '# TYPE jaxmodels_compilations_total counter',
                f'jaxmodels_compilations_total {self.compilations}',
                '# TYPE jaxmodels_compilations_after_warmup_total counter',
                f'jaxmodels_compilations_after_warmup_total {self.compilations_after_warmup}']
    return '\n'.join(lines) + '\n'
