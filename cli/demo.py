"""`vsearch demo`: start Triton and the gateway, index the real corpus, run example queries, draw galleries."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
from PIL import Image

from cli.indexing import index_files
from cli.output import CliError, print_hits, print_stats
from clients.client import VisualSearchClient
from devkit import gallery
from devkit.corpus import demo_corpus
from devkit.launcher import Services, running_services, start_console, start_gateway
from devkit.milvus_server import MilvusServer
from server.core.config import Settings, free_port
from server.embedding.imaging import Limits, decode_image
from server.model_versions.registry import default_version


def write_gallery(path: Path, query_bytes: bytes, crop: tuple | None, title: str, response: object,
                  files: dict[str, Path]) -> None:
    def shown(data: bytes) -> Image.Image:
        """As the encoder sees it: EXIF orientation applied, transparency on white."""
        return decode_image(data, Limits(max_bytes=2**31, max_pixels=2**31))

    def load(image_id: str) -> Image.Image | None:
        return shown(files[image_id].read_bytes()) if image_id in files else None

    gallery.render(shown(query_bytes), crop, title,
                   [(h.image_id, h.score) for h in response.results], load, path)
    print(f"gallery: {path}")


def known_files() -> dict[str, Path]:
    return {p.image_id: p.path for p in demo_corpus()[0]}


def wait_visible(client: VisualSearchClient, image_id: str, timeout_s: float = 30.0) -> float:
    """Milliseconds until `image_id` can be searched by ID through `client` (another gateway than the writer's)."""
    start = time.perf_counter()
    while True:
        try:
            client.similar(image_id, k=1)
            return 1000 * (time.perf_counter() - start)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.perf_counter() - start > timeout_s:
                raise
            time.sleep(0.01)


@contextmanager
def demo_services(settings: Settings, milvus: bool) -> Iterator[tuple[Services, str, Path]]:
    """Triton + the gateway (embedded FAISS). With `milvus`: a real Milvus server of the demo's own, the gateway
    on it, and a second gateway replica that answers the queries. Yields (services, query address, state dir)."""
    logs = settings.data_dir / "logs"
    if not milvus:
        with running_services(settings, logs) as services:
            yield services, settings.grpc_address, settings.data_dir
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir, prefix="milvus-demo-") as tmp:
        print("starting a Milvus standalone server (PyPI milvus 2.3.5) ...", flush=True)
        server = MilvusServer(Path(tmp) / "milvus").start()
        try:
            print(f"Milvus ready at {server.uri} in {server.start_seconds:.0f} s", flush=True)
            on_milvus = settings.with_overrides(index_backend="milvus", milvus_uri=server.uri,
                                                blob_url=str(Path(tmp) / "blobs"), data_dir=Path(tmp) / "gateway-a")
            with running_services(on_milvus, logs) as services:
                replica = start_gateway(on_milvus.with_overrides(grpc_port=free_port(), metrics_port=free_port(),
                                                                 data_dir=Path(tmp) / "gateway-b"),
                                        logs / "gateway-replica.log")
                try:
                    yield services, replica.target, Path(tmp)
                finally:
                    replica.stop()
        finally:
            server.stop()


def run_demo(args: argparse.Namespace, settings: Settings) -> None:
    photos, queries = demo_corpus()
    if not photos:
        raise CliError("no corpus images found: run `make setup` (it installs the Debian image packages)")
    files = {p.image_id: p.path for p in photos}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    if settings.auth_mode != "insecure-local":
        print("demo: running the gateway in INSECURE LOCAL mode (loopback, no TLS, no tokens, everyone is admin);"
              " production runs --auth-mode jwt, see docs/OPERATIONS.md", flush=True)
        settings = settings.with_overrides(auth_mode="insecure-local", grpc_host="127.0.0.1")
    with demo_services(settings, args.milvus) as (services, query_target, state_dir), \
            VisualSearchClient(services.settings.grpc_address) as writer, VisualSearchClient(query_target) as client:
        s = services.settings
        print(f"indexing {len(photos)} real images from Debian packages and scikit-image ...")
        t0 = time.perf_counter()
        totals = index_files(writer, [(p.image_id, p.path) for p in photos], state_dir / "demo-indexed-ids.txt")
        print(f"indexed in {time.perf_counter() - t0:.1f}s: {totals}")
        if query_target != s.grpc_address:
            print(f"queries go to a second gateway ({query_target}): replicas share Milvus, no per-image state")
            print(f"the replica saw the last write {wait_visible(client, photos[-1].image_id):.0f} ms after its ack "
                  "(searches read at Session consistency: a writer reads its own writes at once, others ~1 time tick)")
        for query in queries:
            print(f"\n== {query.title}")
            if query.image_id is not None:
                data, response = files[query.image_id].read_bytes(), client.similar(query.image_id, k=args.k)
            else:
                assert query.path is not None
                data = query.path.read_bytes()
                response = client.search(data, crop=query.crop, k=args.k)
            print_hits(response)
            write_gallery(out / f"{query.name}.png", data, query.crop, query.title, response, files)
        print()
        stats = client.stats()
        print_stats(stats)
        version = default_version(s)
        if stats.model_version != f"{s.model_name}/{version}":
            print(f"this data directory ({state_dir}) was created on {stats.model_version}; new ones start on "
                  f"{s.model_name}/{version}. `vsearch switch-model {version} --wait` re-embeds it.")
        if args.keep_running:
            console = start_console(query_target, args.console_port, state_dir / "console.log", "--insecure-local",
                                    "--metrics-url", f"http://{s.grpc_host}:{s.metrics_port}/metrics")
            print(f"\nservices keep running: gateway {s.grpc_address}, Triton {s.triton_url}.")
            print(f"console: {console.url}  (search by image, drag a crop box, live SLOs). Ctrl-C stops everything.")
            try:
                with suppress(KeyboardInterrupt):
                    signal.pause()
            finally:
                console.stop()
    print("demo done; services stopped.")
