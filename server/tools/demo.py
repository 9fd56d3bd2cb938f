"""`vsearch demo`: start Triton and the gateway, index the real corpus, run example queries, draw galleries."""

from __future__ import annotations

import argparse
import io
import signal
import time
from contextlib import suppress
from pathlib import Path

from PIL import Image

from clients.client import VisualSearchClient
from server.core.config import Settings
from server.tools import gallery
from server.tools.corpus import real_photos
from server.tools.indexing import index_files
from server.tools.launcher import running_services
from server.tools.output import CliError, print_hits, print_stats


def write_gallery(path: Path, query_bytes: bytes, crop: tuple | None, title: str, response: object,
             files: dict[str, Path]) -> None:
    def load(image_id: str) -> Image.Image | None:
        return Image.open(files[image_id]) if image_id in files else None

    gallery.render(Image.open(io.BytesIO(query_bytes)), crop, title,
                   [(h.image_id, h.score) for h in response.results], load, path)
    print(f"gallery: {path}")


def known_files() -> dict[str, Path]:
    return {p.image_id: p.path for p in real_photos()}


def run_demo(args: argparse.Namespace, settings: Settings) -> None:
    photos = real_photos()
    if not photos:
        raise CliError("no corpus images found: run `make setup` (it installs the Debian wallpaper packages)")
    files = {p.image_id: p.path for p in photos}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    if settings.auth_mode != "insecure-local":
        print("demo: running the gateway in INSECURE LOCAL mode (loopback, no TLS, no tokens, everyone is admin);"
              " production runs --auth-mode jwt, see docs/OPERATIONS.md", flush=True)
        settings = settings.with_overrides(auth_mode="insecure-local", grpc_host="127.0.0.1")
    with running_services(settings, settings.data_dir / "logs") as services, \
            VisualSearchClient(settings.grpc_address) as client:
        s = services.settings
        print(f"indexing {len(photos)} real images from Debian packages and scikit-image ...")
        t0 = time.perf_counter()
        totals = index_files(client, [(p.image_id, p.path) for p in photos], s.data_dir / "demo-indexed-ids.txt")
        print(f"indexed in {time.perf_counter() - t0:.1f}s: {totals}")

        # 1. A whole image: a smaller, re-compressed copy of a corpus photo (what an upload looks like).
        original = files.get("skimage/chelsea") or photos[0].path
        buffer = io.BytesIO()
        image = Image.open(original).convert("RGB")
        image.resize((image.width // 2, image.height // 2)).save(buffer, "JPEG", quality=60)
        queries = [("1-whole-image", buffer.getvalue(), None, f"whole image: {original.name} (half size, JPEG q60)")]
        # 2. A crop of one object: the astronaut's face out of the astronaut photo.
        astronaut = files.get("skimage/astronaut") or photos[1].path
        crop = (0.30, 0.0, 0.75, 0.45)
        queries.append(("2-crop", astronaut.read_bytes(), crop, f"crop {crop} of {astronaut.name}"))
        for name, data, box, title in queries:
            print(f"\n== {title}")
            response = client.search(data, crop=box, k=args.k)
            print_hits(response)
            write_gallery(out / f"{name}.png", data, box, title, response, files)
        # 3. More like this, by ID.
        similar_id = "skimage/coffee" if "skimage/coffee" in files else photos[2].image_id
        print(f"\n== more like this: {similar_id}")
        response = client.similar(similar_id, k=args.k)
        print_hits(response)
        write_gallery(out / "3-more-like-this.png", files[similar_id].read_bytes(), None,
                 f"more like this: {similar_id}", response, files)
        print()
        print_stats(client.stats())
        if args.keep_running:
            print(f"\nservices keep running: gateway {s.grpc_address}, Triton {s.triton_url}. Ctrl-C stops them.")
            with suppress(KeyboardInterrupt):
                signal.pause()
    print("demo done; services stopped.")
