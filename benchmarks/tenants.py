"""Callers against each other (issue 25), through a production-mode gateway (TLS + tokens), each caller its own
token: what a decode bomb from one token does to the others, and what a noisy neighbour leaves a well-behaved one.

Part of `python -m benchmarks.overload_bench` (figures in benchmarks/results/overload.*):
The victim is a well-behaved caller: it sends ordinary photos at a steady quarter of the gateway's capacity (half
of its fair share when two callers are active), from a pool of threads, each call with a 2-s deadline.
- bomb: while the victim searches, an attacker sends progressive-JPEG bombs (2 threads, 1-s deadlines);
  `bomb_others_ok_share` = the victim's OK share during the attack, `bomb_recovery_s` = from the attack's end
  until the victim's latency is back to normal (its median over 5 calls within 1.5x of before). Two bombs: the
  one of the issue (4000x4000, 20,000 extra scans: refused at the header now) and the heaviest one the limits
  allow (7000x7000, the scan limit's 256 scans).
- neighbour: the victim's goodput alone, then while the attacker keeps 4 concurrent 50-Mpx searches in flight
  (4x a fair share of slots, each search the stage's whole decode budget); `neighbour_goodput_ratio` = with /
  alone.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from PIL import Image

from clients.client import NewImage, VisualSearchClient
from devkit.bombs import progressive_scan_bomb
from devkit.launcher import running_services
from devkit.tokens import keygen, mint, selfsigned
from server.core.config import loopback_settings
from server.embedding.imaging import MAX_JPEG_SCANS

ATTACK_DEADLINE_S = 1.0
VICTIM_DEADLINE_S = 2.0


@dataclass
class Calls:
    """What one caller's threads saw: (start, end, status name) per call."""

    log: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, start: float, status: str) -> None:
        with self.lock:
            self.log.append((start, time.monotonic(), status))

    def between(self, t0: float, t1: float) -> list[tuple[float, float, str]]:
        return [c for c in self.log if t0 <= c[0] < t1]


@dataclass
class Tenants:
    target: str
    roots: bytes
    tokens: dict[str, str]

    def client(self, who: str, timeout_s: float) -> VisualSearchClient:
        return VisualSearchClient(self.target, timeout_s=timeout_s, token=self.tokens[who],
                                  root_certificates=self.roots)


@contextmanager
def production_gateway(root: Path, images: list[bytes]) -> Iterator[Tenants]:
    """Triton + a gateway in jwt mode (TLS, token keys), the corpus indexed, tokens for `victim` and `attacker`."""
    keygen("k1", root / "k1.pem", root / "jwks.json")
    selfsigned(root / "tls.pem", root / "tls.key")
    settings = loopback_settings(data_dir=root / "data", auth_mode="jwt", jwt_keys_file=str(root / "jwks.json"),
                                 tls_cert_file=str(root / "tls.pem"), tls_key_file=str(root / "tls.key"),
                                 metrics_port=0)
    private = (root / "k1.pem").read_bytes()
    tokens = {who: mint(private, "k1", who, roles, owners, ttl_s=3 * 3600) for who, roles, owners in
              (("victim", ["search"], []), ("attacker", ["search"], []), ("indexer", ["admin"], []))}
    with running_services(settings, root / "logs", announce=False) as services:
        tenants = Tenants(services.settings.grpc_address, (root / "tls.pem").read_bytes(), tokens)
        with tenants.client("indexer", 300) as client:
            client.add_images(NewImage(f"photo-{n}", data) for n, data in enumerate(images))
        yield tenants


def _call(client: VisualSearchClient, payload: bytes, timeout_s: float, calls: Calls) -> str:
    start = time.monotonic()
    try:
        client.search(payload, k=10, timeout_s=timeout_s)
        status = "OK"
    except grpc.RpcError as exc:
        status = exc.code().name
    calls.record(start, status)
    return status


def run_threads(tenants: Tenants, who: str, calls: Calls, payloads: list[bytes], threads: int, timeout_s: float,
                stop: threading.Event) -> list[threading.Thread]:
    """`threads` callers, each sending its next search when the last one is answered (closed loop)."""
    def loop(offset: int) -> None:
        with tenants.client(who, timeout_s) as client:
            n = offset
            while not stop.is_set():
                if _call(client, payloads[n % len(payloads)], timeout_s, calls) == "RESOURCE_EXHAUSTED":
                    time.sleep(0.05)  # what a client does with the retry hint
                n += threads
    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    return workers


def run_steady(tenants: Tenants, who: str, calls: Calls, payloads: list[bytes], rate: float, timeout_s: float,
               stop: threading.Event) -> list[threading.Thread]:
    """A caller sending `rate` searches per second on schedule, whatever the answers take (open loop)."""
    clients = [tenants.client(who, timeout_s) for _ in range(8)]
    pool = ThreadPoolExecutor(len(clients))

    def schedule() -> None:
        n, start = 0, time.monotonic()
        while not stop.is_set():
            pool.submit(_call, clients[n % len(clients)], payloads[n % len(payloads)], timeout_s, calls)
            n += 1
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
        pool.shutdown(wait=True)
        for client in clients:
            client.close()
    worker = threading.Thread(target=schedule, daemon=True)
    worker.start()
    return [worker]


def big_photo(images: list[bytes], pixels: int = 50_000_000) -> bytes:
    """A real photo upscaled to just under the pixel limit (JPEG q85): what a heavy caller sends."""
    image = Image.open(io.BytesIO(images[0])).convert("RGB")
    side = int(pixels ** 0.5) - 10
    buffer = io.BytesIO()
    image.resize((side, side)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _ok_share(calls: list[tuple[float, float, str]]) -> float:
    return sum(c[2] == "OK" for c in calls) / max(1, len(calls))


def _median_ms(calls: list[tuple[float, float, str]]) -> float:
    ok = [1000 * (end - start) for start, end, status in calls if status == "OK"]
    return statistics.median(ok) if ok else float("nan")


def bomb(tenants: Tenants, images: list[bytes], payload: bytes, attack_s: float, victim_rate: float
         ) -> dict[str, object]:
    victim, stop_victim = Calls(), threading.Event()
    workers = run_steady(tenants, "victim", victim, images, victim_rate, VICTIM_DEADLINE_S, stop_victim)
    time.sleep(4.0)
    before_end = time.monotonic()
    attacker, stop_attack = Calls(), threading.Event()
    bombers = run_threads(tenants, "attacker", attacker, [payload], 2, ATTACK_DEADLINE_S, stop_attack)
    time.sleep(attack_s)
    stop_attack.set()
    for worker in bombers:
        worker.join(30)
    attack_end = time.monotonic()
    time.sleep(6.0)
    stop_victim.set()
    for worker in workers:
        worker.join(30)
    normal_ms = _median_ms(victim.between(before_end - 4.0, before_end))
    after = sorted(victim.between(attack_end, attack_end + 6.0))
    recovered_at = next((after[i][0] for i in range(len(after) - 4)
                         if _median_ms(after[i:i + 5]) <= 1.5 * normal_ms), None)
    during = victim.between(before_end, attack_end)
    return {"bomb_bytes": len(payload), "attack_calls": len(attacker.log),
            "attack_statuses": dict(Counter(status for _, _, status in attacker.log)),
            "victim_calls_during": len(during), "victim_statuses_during": dict(Counter(c[2] for c in during)),
            "others_ok_share": round(_ok_share(during), 3),
            "victim_p50_ms_before": round(normal_ms, 1), "victim_p50_ms_during": round(_median_ms(during), 1),
            "recovery_s": None if recovered_at is None else round(max(0.0, recovered_at - attack_end), 2)}


def neighbour(tenants: Tenants, images: list[bytes], seconds: float, victim_rate: float) -> dict[str, object]:
    def victim_goodput(with_attacker: bool) -> tuple[float, Calls, Calls]:
        attacker, stop_attack = Calls(), threading.Event()
        heavy = big_photo(images)
        bombers = run_threads(tenants, "attacker", attacker, [heavy], 4, ATTACK_DEADLINE_S, stop_attack) \
            if with_attacker else []
        time.sleep(1.0 if with_attacker else 0.0)
        victim, stop_victim = Calls(), threading.Event()
        workers = run_steady(tenants, "victim", victim, images, victim_rate, VICTIM_DEADLINE_S, stop_victim)
        time.sleep(seconds)
        stop_victim.set()
        stop_attack.set()
        for worker in [*workers, *bombers]:
            worker.join(30)
        return sum(c[2] == "OK" for c in victim.log) / seconds, victim, attacker

    alone, _, _ = victim_goodput(False)
    together, victim, attacker = victim_goodput(True)
    return {"victim_offered_per_s": round(victim_rate, 1), "victim_goodput_alone_per_s": round(alone, 2),
            "victim_goodput_with_neighbour_per_s": round(together, 2),
            "neighbour_goodput_ratio": round(together / alone, 3) if alone else None,
            "victim_ok_share_with_neighbour": round(_ok_share(victim.log), 3),
            "attacker_calls": len(attacker.log), "attacker_ok": sum(c[2] == "OK" for c in attacker.log),
            "attacker_shed": sum(c[2] == "RESOURCE_EXHAUSTED" for c in attacker.log)}


def measure(root: Path, images: list[bytes], capacity: float, attack_s: float = 20.0, neighbour_s: float = 20.0
            ) -> dict[str, object]:
    """`capacity`: the gateway's Search capacity (per s); the victim sends a quarter of it."""
    rate = capacity / 4
    with production_gateway(root, images) as tenants:
        issue_bomb = bomb(tenants, images, progressive_scan_bomb(4000, 20_000), attack_s, rate)
        print(f"bomb (issue's): {issue_bomb}", flush=True)
        heaviest = bomb(tenants, images, progressive_scan_bomb(7000, MAX_JPEG_SCANS - 10), attack_s, rate)
        print(f"bomb (heaviest allowed): {heaviest}", flush=True)
        noisy = neighbour(tenants, images, neighbour_s, rate)
        print(f"noisy neighbour: {noisy}", flush=True)
    recoveries = [issue_bomb["recovery_s"], heaviest["recovery_s"]]
    return {"bomb_issue": issue_bomb, "bomb_heaviest_allowed": heaviest, "neighbour": noisy,
            "bomb_others_ok_share": min(issue_bomb["others_ok_share"], heaviest["others_ok_share"]),
            "bomb_recovery_s": None if None in recoveries else max(recoveries),  # None: not back within 6 s
            "neighbour_goodput_ratio": noisy["neighbour_goodput_ratio"]}
