"""gRPC load generator (perf_analyzer and ghz can't run on these hosts).

Runs in worker processes of its own (spawned, so the client never shares the server's GIL), in two modes:
- closed loop: fixed concurrency, each worker sends its next request when the previous one returns;
- open loop: Poisson arrivals at a target rate; latency counts from the *scheduled* send time, so a
  server that falls behind shows its queueing (no coordinated omission).
Latencies go into HdrHistograms (1 µs .. 60 s, 3 significant digits), merged across processes.

Targets (built inside each worker from a picklable spec):
  TritonTarget(url, pixels)        preprocessed uint8 tensors straight to Triton's gRPC
  GatewayTarget(url, queries)      the full gateway Search (image bytes, optional crops)
  (raw ANN search runs in-process: see benchmarks/e2e_bench.py)
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import numpy as np
from hdrh.histogram import HdrHistogram

from server.embedding.contract import (
    CROP_INPUT_NAME,
    IMAGE_INPUT_NAME,
    IMAGE_MODEL_NAME,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    TRITON_GRPC_KEY_HEADER,
    VERSION_PARAMETER,
    WHOLE_IMAGE,
)

LOWEST_US, HIGHEST_US, DIGITS = 1, 60_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def _key_header(key: str | None) -> dict[str, str] | None:
    return {TRITON_GRPC_KEY_HEADER: key} if key else None


@dataclass(frozen=True)
class TritonTarget:
    url: str
    pixels: np.ndarray  # uint8 [Q, 224, 224, 3]: one row per request, cycled
    key: str | None = None  # the launcher's key: Triton restricts inference to its holders
    model: str = MODEL_NAME

    def connect(self) -> Callable[[int], None]:
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(self.url)

        def call(i: int) -> None:
            tensor = triton_grpc.InferInput(INPUT_NAME, [1, *self.pixels.shape[1:]], "UINT8")
            tensor.set_data_from_numpy(self.pixels[i % len(self.pixels)][None])
            client.infer(self.model, [tensor], client_timeout=30, headers=_key_header(self.key))
        return call


@dataclass(frozen=True)
class TritonImageTarget:
    """Image bytes + crop box straight to Triton's image model (decode, crop, resize and encode in Triton)."""

    url: str
    queries: list[tuple[bytes, tuple[float, float, float, float] | None]]
    key: str | None = None
    version: str = "1"

    def connect(self) -> Callable[[int], None]:
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(self.url)

        def call(i: int) -> None:
            data, crop = self.queries[i % len(self.queries)]
            image = triton_grpc.InferInput(IMAGE_INPUT_NAME, [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
            box = triton_grpc.InferInput(CROP_INPUT_NAME, [1, 4], "FP32")
            box.set_data_from_numpy(np.array([crop or WHOLE_IMAGE], dtype=np.float32))
            client.infer(IMAGE_MODEL_NAME, [image, box], parameters={VERSION_PARAMETER: self.version},
                         outputs=[triton_grpc.InferRequestedOutput(OUTPUT_NAME)],  # not the regions: a query's cost
                         client_timeout=30, headers=_key_header(self.key))
        return call


@dataclass(frozen=True)
class GatewayTarget:
    url: str
    queries: list[tuple[bytes, tuple[float, float, float, float] | None]]
    k: int = 10
    timeout_s: float = 30.0  # the caller's deadline (the overload benchmark uses 0.5 s)

    def connect(self) -> Callable[[int], None]:
        from clients.client import VisualSearchClient

        client = VisualSearchClient(self.url, timeout_s=self.timeout_s)

        def call(i: int) -> None:
            data, crop = self.queries[i % len(self.queries)]
            client.search(data, crop=crop, k=self.k)
        return call


@dataclass(frozen=True)
class GatewayByIdTarget:
    """"More like this" searches by indexed image ID: no image to embed, only the gateway and the store."""

    url: str
    image_ids: list[str]
    k: int = 10

    def connect(self) -> Callable[[int], None]:
        from clients.client import VisualSearchClient

        client = VisualSearchClient(self.url, timeout_s=30)

        def call(i: int) -> None:
            client.similar(self.image_ids[i % len(self.image_ids)], k=self.k)
        return call


@dataclass(frozen=True)
class ReplicasByIdTarget:
    """Searches by ID spread round-robin over several gateway replicas (each worker keeps one channel per replica)."""

    urls: tuple[str, ...]
    image_ids: list[str]
    k: int = 10

    def connect(self) -> Callable[[int], None]:
        from clients.client import VisualSearchClient

        clients = [VisualSearchClient(url, timeout_s=30) for url in self.urls]

        def call(i: int) -> None:
            clients[i % len(clients)].similar(self.image_ids[i % len(self.image_ids)], k=self.k)
        return call


@dataclass
class RunResult:
    mode: str
    requests: int
    duration_s: float
    errors: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram | None = None
    concurrency: int | None = None
    target_rate: float | None = None

    @property
    def qps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, p: float) -> float:
        return self.histogram.get_value_at_percentile(p) / 1000.0 if self.histogram and self.requests else float("nan")

    def summary(self) -> dict[str, object]:
        return {"mode": self.mode, "concurrency": self.concurrency, "target_rate": self.target_rate,
                "requests": self.requests, "duration_s": round(self.duration_s, 3), "qps": round(self.qps, 2),
                **{f"p{p:g}_ms": round(self.percentile_ms(p), 3) for p in (50, 90, 99, 99.9)},
                "mean_ms": round(self.histogram.get_mean_value() / 1000.0, 3) if self.requests else None,
                "errors": self.errors}


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return code().name
    status = getattr(exc, "status", None)
    if callable(status):
        return str(status()).replace("StatusCode.", "")
    return type(exc).__name__


class _Recorder:
    """Thread-safe latency histogram + error counts of one worker process."""

    def __init__(self) -> None:
        self.histogram, self.errors, self.done = new_histogram(), Counter(), 0
        self._lock = threading.Lock()

    def run(self, call: Callable[[int], None], i: int, since: float) -> None:
        """Make call i; its latency counts from `since` (send time, or scheduled time in open loop)."""
        try:
            call(i)
        except Exception as exc:
            with self._lock:
                self.errors[_error_code(exc)] += 1
            return
        elapsed_us = int((time.perf_counter() - since) * 1e6)
        with self._lock:
            self.histogram.record_value(max(LOWEST_US, min(HIGHEST_US, elapsed_us)))
            self.done += 1

    def report(self, out: mp.Queue, started: float) -> None:
        """Wall-clock start and end (comparable across processes), so the run's duration spans all workers."""
        out.put((self.done, started, time.time(), dict(self.errors), self.histogram.encode()))


def _connect_and_warm_up(target: object, warmup: int, offset: int, barrier: Barrier) -> Callable[[int], None]:
    """Connect and warm up, then wait for every worker: all start measuring together."""
    call = target.connect()
    for i in range(warmup):
        with contextlib.suppress(Exception):
            call(offset + i)
    barrier.wait()
    return call


def _closed_worker(target: object, threads: int, requests: int, warmup: int, offset: int, barrier: Barrier,
                   out: mp.Queue) -> None:
    call = _connect_and_warm_up(target, warmup, offset, barrier)
    recorder, lock = _Recorder(), threading.Lock()
    counter = iter(range(requests))

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            recorder.run(call, offset + i, time.perf_counter())

    started = time.time()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    recorder.report(out, started)


def _open_worker(target: object, rate: float, requests: int, warmup: int, seed: int, offset: int,
                 max_in_flight: int, barrier: Barrier, out: mp.Queue) -> None:
    schedule = poisson_schedule(rate, requests, seed)
    call = _connect_and_warm_up(target, warmup, offset, barrier)
    recorder = _Recorder()
    started, start = time.time(), time.perf_counter()
    with ThreadPoolExecutor(max_in_flight) as pool:
        for i, t in enumerate(schedule):
            delay = start + t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(recorder.run, call, offset + i, start + t)
    recorder.report(out, started)


def poisson_schedule(rate: float, count: int, seed: int) -> np.ndarray:
    """Send times (s from start) of a Poisson process: exponential gaps with mean 1/rate."""
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=count))


def _collect(mode: str, processes: list[mp.Process], out: mp.Queue) -> RunResult:
    """Every worker's result; a worker that died without one fails the run (never a silent wait forever)."""
    results = []
    while len(results) < len(processes):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in processes if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                for p in processes:
                    p.kill()
                raise RuntimeError(f"load-generator worker died (exit code {dead[0].exitcode}); its traceback is "
                                   "above") from None
    for p in processes:
        p.join()
    histogram, errors = new_histogram(), Counter()
    for _, _, _, errs, encoded in results:
        histogram.add(HdrHistogram.decode(encoded))
        errors.update(errs)
    duration = max(r[2] for r in results) - min(r[1] for r in results)
    return RunResult(mode, sum(r[0] for r in results), duration, dict(errors), histogram)


def closed_loop(target: object, concurrency: int, requests: int, warmup: int = 10, processes: int = 2) -> RunResult:
    """`concurrency` requests in flight at all times, spread over worker processes."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if n < concurrency % processes else 0) for n in range(processes)]
    barrier = ctx.Barrier(processes)
    procs = [ctx.Process(target=_closed_worker,
                         args=(target, s, requests * s // concurrency, warmup // processes, n * 100_003, barrier, out))
             for n, s in enumerate(shares)]
    for p in procs:
        p.start()
    result = _collect("closed", procs, out)
    result.concurrency = concurrency
    return result


def open_loop(target: object, rate: float, requests: int, warmup: int = 10, processes: int = 2,
              max_in_flight: int = 256, seed: int = 0) -> RunResult:
    """Poisson arrivals at `rate` requests/s in total (each process an independent Poisson stream)."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    barrier = ctx.Barrier(processes)
    procs = [ctx.Process(target=_open_worker,
                         args=(target, rate / processes, requests // processes, warmup // processes, seed + n,
                               n * 100_003, max_in_flight, barrier, out)) for n in range(processes)]
    for p in procs:
        p.start()
    result = _collect("open", procs, out)
    result.target_rate = rate
    return result
