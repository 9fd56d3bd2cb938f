"""The batch embedding job: manifest -> read -> prepare -> embed (actor pool) -> shard files -> VectorStore.

    python -m jobs.embed --manifest DIR|FILE.csv|FILE.parquet|catalog:encoder/N|blobs:DIR --model-version N \
        --out OUT [--ray-address local|auto|ray://HOST:PORT|HOST:PORT] [--data-dir var] [--triton-url HOST:8001]

Resources (pitfalls reproduced on the project's 2-core machines):
- prepare tasks and embed actors reserve different resources (`prepare_cpus` != `actor_cpus`), so Ray Data cannot
  fuse the prepare stage into the actors (decoding would then run serially inside them);
- CPU actors reserve at most all CPUs but one: a pool holding every CPU leaves none to the read/prepare tasks and
  the job waits forever without an error. The job refuses such a configuration instead of hanging.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.embed.adapters import (
    ENCODER_MODEL_NAME,
    INPUT_SIZE,
    REGION_BOXES,
    REPO_ROOT,
    Limits,
    open_vector_store,
    read_active_version,
    signature_store,
)
from jobs.embed.mapper import OrtEmbedder, TritonEmbedder, prepare_batch
from jobs.embed.reader import Manifest, expand_shard, freeze_manifest, read_bytes
from jobs.embed.writer import ShardCommitter, done_shards, load_into_store

log = logging.getLogger("jobs.embed")


@dataclass
class JobConfig:
    manifest: str
    out: Path
    model_version: int
    ray_address: str = "local"
    data_dir: Path | None = None  # load the embeddings into this data directory's catalog of the version
    model_repository: Path = REPO_ROOT / "model_repository"
    triton_url: str | None = None  # embed through Triton instead of an ONNX Runtime session per actor
    # Triton restricts inference to the holders of its launcher's key (`vsearch serve` saves it in the data dir)
    triton_key: str | None = field(default_factory=lambda: os.environ.get("VSEARCH_TRITON_ADMIN_KEY"))
    shard_size: int = 1000
    actors: int | None = None  # default: GPUs, else all CPUs but one divided by actor_cpus
    actor_cpus: float = 1.0
    actor_gpus: float | None = None  # default: 1 per actor when the cluster has GPUs and no Triton URL is given
    prepare_cpus: float = 0.5
    batch_size: int = 32
    driver_ip: str | None = None  # default: the address's host when it is a loopback address
    limits: Limits = field(default_factory=Limits)
    allow_active_catalog: bool = False  # load into the catalog the gateway serves (only when it is stopped)
    regions: bool = True  # also embed REGION_BOXES of each image, as the gateway indexes (7 encoder inputs each)

    @property
    def model_tag(self) -> str:
        return f"{ENCODER_MODEL_NAME}/{self.model_version}"

    @property
    def model_path(self) -> Path:
        return self.model_repository / ENCODER_MODEL_NAME / str(self.model_version) / "model.onnx"


def connect(address: str, driver_ip: str | None = None) -> bool:
    """`local`: a Ray instance on this machine (no cluster needed); otherwise join the cluster at `address`.

    A driver on a loopback address joins as that node (Ray would otherwise look for a raylet on the machine's
    external address). Returns False when Ray was connected already (the caller's Ray is left running).
    """
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False, configure_logging=False)
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    ip = driver_ip or (host if host.startswith("127.") and not address.startswith("ray://") else None)
    if ip:
        ray.init(address=address, _node_ip_address=ip, configure_logging=False)
    else:
        ray.init(address=address, configure_logging=False)
    return True


@dataclass(frozen=True)
class Plan:
    actors: int
    actor_cpus: float
    actor_gpus: float
    cluster_cpus: float
    cluster_gpus: float


def plan_resources(config: JobConfig, resources: dict[str, float]) -> Plan:
    """Pool size and per-actor reservation; refuses a pool that would starve the read/prepare tasks."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    actor_gpus = config.actor_gpus if config.actor_gpus is not None else (
        1.0 if gpus >= 1 and config.triton_url is None else 0.0)
    if config.actors is not None:
        actors = config.actors
    elif actor_gpus > 0:
        actors = max(1, int(gpus // actor_gpus))
    else:
        actors = max(1, math.floor((cpus - 1) / config.actor_cpus))
    if actors * config.actor_cpus > cpus - max(1.0, config.prepare_cpus):
        raise ValueError(f"{actors} actors x {config.actor_cpus} CPU leave less than one of the cluster's {cpus:g} "
                         "CPUs to the read/prepare tasks: the job would wait forever. Use fewer actors or a "
                         "smaller --actor-cpus.")
    if config.prepare_cpus == config.actor_cpus:
        raise ValueError("--prepare-cpus must differ from --actor-cpus, or Ray Data may fuse prepare into the actors")
    return Plan(actors, config.actor_cpus, actor_gpus, cpus, gpus)


def build_dataset(config: JobConfig, manifest: Manifest, pending: list[int], plan: Plan) -> Any:
    """The Ray Data pipeline over the pending shards (lazy; executed by iterating it)."""
    import ray

    # Blocks of about one embedding batch of pixels: by default a task's output is cut at 128 MiB, so a whole
    # shard reached the actors as ONE block, embedded by one actor only after the shard was fully prepared.
    views = 1 + len(REGION_BOXES) if config.regions else 1
    ray.data.DataContext.get_current().target_max_block_size = config.batch_size * views * INPUT_SIZE * INPUT_SIZE * 3
    # One block per pending shard (file readers coalesce small files into one task: no parallelism), expanded
    # into batches of rows by the first (fused) task stage; the driver holds shard paths only.
    shards = [{"path": str(manifest.shard_path(s))} for s in pending]
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    ds = ds.map_batches(expand_shard, batch_size=1, num_cpus=config.prepare_cpus)
    ds = ds.map_batches(read_bytes, batch_size=16, num_cpus=config.prepare_cpus)
    ds = ds.map_batches(prepare_batch, batch_size=16, num_cpus=config.prepare_cpus,
                        fn_kwargs={"limits": config.limits, "regions": config.regions})
    if config.triton_url:
        embedder, kwargs = TritonEmbedder, {"url": config.triton_url, "version": str(config.model_version),
                                            "key": config.triton_key}
    else:
        embedder, kwargs = OrtEmbedder, {"model_path": str(config.model_path),
                                         "threads": max(1, round(plan.actor_cpus)), "use_gpu": plan.actor_gpus > 0}
    return ds.map_batches(embedder, fn_constructor_kwargs=kwargs, batch_size=config.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.actor_cpus,
                          num_gpus=plan.actor_gpus or None, ray_remote_args_fn=_round_robin_nodes(plan))


def _round_robin_nodes(plan: Plan) -> Callable[[], dict[str, Any]] | None:
    """Actors placed on the nodes that can host one, in turn (soft: elsewhere if that node is gone).

    Ray Data's default SPREAD still put both actors of a 2-actor pool on one node of a two-node cluster
    (observed here), so a node loss took the whole pool down. Called by Ray Data for every actor it starts.
    `ray_remote_args_fn` is deprecated for removal in Ray 2.64: revisit when upgrading.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]
             and n["Resources"].get("CPU", 0) >= plan.actor_cpus and n["Resources"].get("GPU", 0) >= plan.actor_gpus]
    if plan.actors < 2 or len(nodes) < 2:
        return None
    turn = itertools.count()
    return lambda: {"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[next(turn) % len(nodes)], soft=True)}


def _stage_summary(committer: ShardCommitter, wall_s: float) -> dict[str, Any]:
    times = committer.times
    rows = max(1, times.rows)

    def stage(busy: float, cpu: float | None = None) -> dict[str, float]:
        entry = {"busy_s": round(busy, 3), "ms_per_image": round(1000 * busy / rows, 3),
                 "images_per_busy_s": round(rows / busy, 1) if busy else 0.0}
        if cpu is not None:
            entry["cpu_ms_per_image"] = round(1000 * cpu / rows, 3)
        return entry

    s = times.seconds
    return {
        "rows": times.rows, "wall_s": round(wall_s, 3), "images_per_s": round(times.rows / wall_s, 1) if wall_s else 0,
        "stages": {"read": stage(s["read_s"]), "prepare": stage(s["prepare_s"], s["prepare_cpu_s"]),
                   "embed": stage(s["embed_s"], s["embed_cpu_s"])},
        "actors": {name: {"rows": int(n), "busy_s": round(sec, 3), "images_per_busy_s": round(n / sec, 1) if sec else 0}
                   for name, (n, sec) in sorted(times.actors.items())},
        "prepared_on": dict(sorted(times.prepared_on.items())),
    }


def run(config: JobConfig) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary, also written to OUT/summary.json."""
    started = time.monotonic()
    if config.data_dir is not None and not config.allow_active_catalog \
            and read_active_version(config.data_dir) == config.model_tag:
        raise ValueError(f"{config.model_tag} is the catalog the gateway serves from {config.data_dir}: a second "
                         "writer would corrupt it. Add through the gateway, or stop it and pass --allow-active-catalog")
    config.out.mkdir(parents=True, exist_ok=True)
    manifest = freeze_manifest(config.manifest, config.out, config.shard_size, config.data_dir)
    done_before = done_shards(config.out)
    pending = [s for s in range(len(manifest.shard_rows)) if s not in done_before]
    log.info("manifest: %d images in %d shards; %d shards done already, %d to run",
             manifest.total, len(manifest.shard_rows), len(done_before), len(pending))
    summary: dict[str, Any] = {"manifest": config.manifest, "model_version": config.model_tag,
                               "images": manifest.total + manifest.rejected, "shards": len(manifest.shard_rows),
                               "shards_skipped": len(done_before), "shards_run": len(pending)}
    if pending:
        import ray

        owned = connect(config.ray_address, config.driver_ip)
        try:
            plan = plan_resources(config, ray.cluster_resources())
            summary["ray"] = {"address": config.ray_address, **asdict(plan), "prepare_cpus": config.prepare_cpus,
                              "embedder": "triton" if config.triton_url else "onnxruntime"}
            log.info("ray: %s", summary["ray"])
            ds = build_dataset(config, manifest, pending, plan)
            committer = ShardCommitter(config.out, manifest, config.model_tag, pending)
            run_started, started_at = time.monotonic(), time.time()
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                committer.add(batch)
            summary["run"] = _stage_summary(committer, time.monotonic() - run_started)
            summary["run"].update(started_at=started_at, ended_at=time.time())  # epoch s: lines up with CPU samples
            summary["ray_data_stats"] = ds.stats()
        finally:
            if owned:
                ray.shutdown()  # local mode: stops the Ray this job started; a cluster keeps running
        if committer.incomplete():
            raise RuntimeError(f"shards incomplete after the stream ended (shard: rows received): "
                               f"{committer.incomplete()}")
    summary.update(_verify(config.out, manifest))
    if config.data_dir is not None:
        store = open_vector_store(config.data_dir, config.model_tag, config.regions)
        try:
            summary["store"] = load_into_store(config.out, manifest, store, signature_store(config.data_dir))
            store.snapshot()
        finally:
            store.close()
    summary["total_wall_s"] = round(time.monotonic() - started, 3)
    (config.out / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(config.out / "runs.jsonl", "a") as runs:
        runs.write(json.dumps({k: v for k, v in summary.items() if k != "ray_data_stats"}) + "\n")
    return summary


def _verify(out: Path, manifest: Manifest) -> dict[str, int]:
    """Every shard committed and every manifest row accounted for exactly once (embedded or failed)."""
    markers = {s: json.loads((out / "done" / f"shard-{s:05d}.json").read_text()) for s in done_shards(out)}
    missing = [s for s in range(len(manifest.shard_rows)) if s not in markers]
    if missing:
        raise RuntimeError(f"shards not committed: {missing}")
    embedded = sum(m["embedded"] for m in markers.values())
    failed = sum(m["failed"] for m in markers.values())
    if embedded + failed != manifest.total:
        raise RuntimeError(f"{embedded} embedded + {failed} failed != {manifest.total} manifest rows")
    return {"embedded": embedded, "failed": failed + manifest.rejected}


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: counts, then throughput per stage and per actor."""
    lines = [f"{summary['images']} images: {summary['embedded']} embedded, {summary['failed']} failed "
             f"(failures/*.parquet); shards {summary['shards']} ({summary['shards_skipped']} done before)"]
    run_info = summary.get("run")
    if run_info:
        lines.append(f"this run: {run_info['rows']} images in {run_info['wall_s']:.1f} s = "
                     f"{run_info['images_per_s']} images/s")
        for name, stage in run_info["stages"].items():
            cpu = f", {stage['cpu_ms_per_image']} CPU-ms/image" if "cpu_ms_per_image" in stage else ""
            lines.append(f"  {name:8s} {stage['ms_per_image']:8.2f} ms/image busy "
                         f"({stage['images_per_busy_s']} images per busy second per worker{cpu})")
        for name, actor in run_info["actors"].items():
            lines.append(f"  actor {name}: {actor['rows']} images, {actor['images_per_busy_s']} images/busy-s")
    if "store" in summary:
        lines.append(f"vector store: {summary['store']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="DIR, FILE.csv, FILE.parquet, catalog:encoder/N, blobs:DIR")
    parser.add_argument("--model-version", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="job directory (manifest, shards, failures)")
    parser.add_argument("--ray-address", default="local", help="local | auto | ray://HOST:PORT | HOST:PORT")
    parser.add_argument("--data-dir", type=Path, help="load into this data directory's catalog of the version")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--triton-url", help="embed through this Triton (HOST:PORT gRPC) instead of ONNX Runtime")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--actors", type=int)
    parser.add_argument("--actor-cpus", type=float, default=1.0)
    parser.add_argument("--actor-gpus", type=float)
    parser.add_argument("--prepare-cpus", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--driver-ip")
    parser.add_argument("--allow-active-catalog", action="store_true",
                        help="load into the served catalog (only with the gateway stopped)")
    parser.add_argument("--max-image-bytes", type=int, default=Limits().max_bytes, help="as the gateway's limit")
    parser.add_argument("--max-image-pixels", type=int, default=Limits().max_pixels, help="as the gateway's limit")
    parser.add_argument("--no-regions", dest="regions", action="store_false",
                        help="embed whole images only (1 encoder input per image instead of 7; a catalog the job "
                             "creates then has no region rows)")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    limits = Limits(max_bytes=args.pop("max_image_bytes"), max_pixels=args.pop("max_image_pixels"))
    config = JobConfig(**args, limits=limits)
    try:
        summary = run(config)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"embed: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0
