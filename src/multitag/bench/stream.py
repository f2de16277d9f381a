"""Streamed batch jobs benchmark (issue #37): peak memory of ``tag --out FOLDER`` against the
job's size, and the Ray Data engine against the local one.

1. ``--part rss``: peak RSS of a streamed ``tag`` job (a fresh process each) on 10k / 50k /
   100k rows: real photos repeated under new ids -> ``bench/stream.{json,md}``.
2. ``--part ray``: local engine vs ``--engine ray`` (local Ray cluster) on two job sizes of
   distinct real photos, one run per Ray actor pool (``--ray-pools 2x1,1x2``: actors x CPUs
   each): steady throughput (the slope, and the rate between the first and the last shard),
   fixed start-up cost (the intercept) and the job size below which the CLI should stay
   local -> ``bench/ray.{json,md}``.
3. ``--part scaling``: ``tag --engine ray`` on a simulated cluster
   (``ray.cluster_utils.Cluster``) of 1, 2 and 3 nodes, each declaring ``--node-cpus`` CPUs
   and holding one actor, all on this machine's cores -> ``bench/scaling.{json,md}``.

Both use one small tagger trained here on 320 real photos at ``--image-size`` (the jobs
measure the streaming and the engines; the model's size only scales the per-photo cost).

    python -m multitag.bench.stream --data-root /work/shared/datasets/fashion-products \\
        --out bench --part rss|ray|scaling|all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from multitag.bench.provenance import git_commit
from multitag.core.io import write_json, write_text

COMMIT = ""  # set by main() before the run: the tree may move on while it runs

_JOB = """
import json, sys, time
t0 = time.perf_counter()
from multitag.core.runtime import keep_freed_memory
from multitag.tagger import shards
from multitag.tagger.stream_job import tag_to_dataset
keep_freed_memory()  # as the command line runs
args = json.loads(sys.argv[1])
# when each shard was committed: the steady rate is read between the first and the last, so
# start-up (imports, Ray, actors loading the model, the first shard's fill) is not in it
stamps = []
_write = shards.ShardWriter.write
def write(self, table):
    done = _write(self, table)
    stamps.append((time.perf_counter(), table.num_rows))
    return done
shards.ShardWriter.write = write
cluster = None
nodes = args.pop("nodes", None)
node_cpus = args.pop("node_cpus", 1)
if nodes:
    import ray
    from ray.cluster_utils import Cluster
    # a 1-CPU head left to Ray's read tasks (with every CPU held by an actor, the actors
    # never left __init__), then `nodes` nodes of `node_cpus` declared CPUs, one actor each
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                      "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=node_cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()  # the simulated cluster's start is not the job's
r = tag_to_dataset(args.pop("model"), [args.pop("manifest")], args.pop("out"), progress=False,
                   id_col="id", path_col="path", **args)
seconds = time.perf_counter() - t0
if cluster is not None:
    ray.shutdown(); cluster.shutdown()
steady = None
if len(stamps) > 1:
    rows = sum(n for _, n in stamps[1:])
    steady = rows / (stamps[-1][0] - stamps[0][0])
# VmHWM: this process's own high-water mark (ru_maxrss keeps the parent's across fork + exec)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"rows": r.written, "seconds": seconds, "nodes": len(r.nodes),
                  "first_shard_s": stamps[0][0] - t0 if stamps else None,
                  "steady_rows_per_s": steady, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def _job(**args) -> dict:
    """One job in a fresh process (its own peak RSS, its own Ray)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", _JOB, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"job {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train(data_root: Path, image_size: int, out: Path) -> tuple[Path, pd.DataFrame]:
    from multitag import MultiTaskTagger
    from multitag.data.manifest import load_manifest
    from multitag.tagger.config import from_flat

    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    common = frame["articleType"].value_counts().index[:8]
    sample = frame[frame["articleType"].isin(common)].sort_values("id")
    sample = sample.groupby("articleType").head(40).reset_index(drop=True)
    tasks = ["gender", "masterCategory", "articleType", "baseColour", "season"]
    tagger = MultiTaskTagger(
        tasks,
        **from_flat(dict(image_size=image_size, epochs=15, progress=False, min_count=3)),
    ).fit(sample)
    tagger.save(out)
    return out, frame[["id", "path"]]


def _manifest(photos: pd.DataFrame, n: int, path: Path) -> Path:
    """``n`` rows with new ids over ``photos`` (repeated when ``n`` exceeds them)."""
    reps = -(-n // len(photos))
    rows = pd.concat([photos[["path"]]] * reps, ignore_index=True).iloc[:n]
    rows.insert(0, "id", [f"row{i}" for i in range(n)])
    rows.to_csv(path, index=False)
    return path


def run_rss(model: Path, photos: pd.DataFrame, sizes: list[int], tmp: Path) -> dict:
    rows = []
    for n in sizes:
        manifest = _manifest(photos.iloc[:2000], n, tmp / f"rss{n}.csv")
        r = _job(model=model, manifest=manifest, out=tmp / f"rss{n}")
        rows.append({**r, "requested": n, "rows_per_s": r["rows"] / r["seconds"]})
        print(rows[-1], flush=True)
    return {"jobs": rows, "shard_rows": 4096, "photos_repeated": 2000}


def parse_pools(text: str) -> list[tuple[int, int]]:
    """``"2x1,1x2"`` -> ``[(2, 1), (1, 2)]``: Ray actor pools as actors x CPUs per actor."""
    pools = []
    for part in text.split(","):
        actors, _, cpus = part.strip().partition("x")
        if not (actors.isdigit() and cpus.isdigit() and int(actors) > 0 and int(cpus) > 0):
            raise ValueError(f"--ray-pools: {part!r} is not ACTORSxCPUS (e.g. 2x1)")
        pools.append((int(actors), int(cpus)))
    return pools


def _engine(points: list[dict]) -> dict:
    """Steady rate (slope), start-up (intercept) and in-run rate of two job sizes."""
    a, b = points
    rate = (b["rows"] - a["rows"]) / (b["seconds"] - a["seconds"])
    return {
        "points": points,
        "steady_rows_per_s": rate,
        "start_up_s": a["seconds"] - a["rows"] / rate,
        # between the first and the last shard of the larger job: a second estimate
        "in_run_rows_per_s": b["steady_rows_per_s"],
    }


def _warm_up(model: Path, photos: pd.DataFrame, tmp: Path, shard_rows: int) -> None:
    """Read every photo once and run one small untimed local job, so every timed run finds
    the same warm caches (the photos' pages, the model's compiled inference graph): without
    it the first timed job, the local engine's, paid for them alone."""
    for path in photos["path"]:
        Path(path).read_bytes()
    manifest = _manifest(photos, min(64, len(photos)), tmp / "warm-up.csv")
    _job(model=model, manifest=manifest, out=tmp / "warm-up", shard_rows=shard_rows)


def run_ray(
    model: Path,
    photos: pd.DataFrame,
    small: int,
    large: int,
    tmp: Path,
    shard_rows: int,
    pools: Sequence[tuple[int, int]] = ((2, 1),),
) -> dict:
    """The local engine, then Ray with each actor pool ``(actors, cpus per actor)``, on the
    same two job sizes; ratios of each pool against the local engine."""
    _warm_up(model, photos.iloc[:large], tmp, shard_rows)
    engines = {}
    runs = [("local", {})] + [
        (f"ray {a}x{c}", {"engine": "ray", "ray_options": {"actors": a, "cpus_per_actor": c}})
        for a, c in pools
    ]
    for name, extra in runs:
        points = []
        for n in (small, large):
            manifest = _manifest(photos.iloc[:large], n, tmp / f"ray{n}.csv")
            out = tmp / f"{name.replace(' ', '-')}-{n}"
            r = _job(model=model, manifest=manifest, out=out, shard_rows=shard_rows, **extra)
            points.append(r)
            print(name, r, flush=True)
        engines[name] = _engine(points)
    local = engines["local"]
    ratios = {
        name: {
            "steady": e["steady_rows_per_s"] / local["steady_rows_per_s"],
            "in_run": (e["in_run_rows_per_s"] or 0) / (local["in_run_rows_per_s"] or float("inf")),
            "extra_start_up_s": e["start_up_s"] - local["start_up_s"],
        }
        for name, e in engines.items()
        if name != "local"
    }
    return {"engines": engines, "ratios": ratios, "sizes": [small, large], "shard_rows": shard_rows}


def run_scaling(
    model: Path, photos: pd.DataFrame, rows: int, node_cpus: int, tmp: Path, shard_rows: int
) -> dict:
    """``tag`` on a simulated cluster of 1, 2, 3 nodes (one actor of ``node_cpus`` CPUs and
    threads per node), and the local engine on the same rows for reference."""
    manifest = _manifest(photos.iloc[:rows], rows, tmp / f"scaling{rows}.csv")
    local = _job(model=model, manifest=manifest, out=tmp / "scaling-local", shard_rows=shard_rows)
    print("local", local, flush=True)
    cluster = []
    for k in (1, 2, 3):
        r = _job(
            model=model,
            manifest=manifest,
            out=tmp / f"scaling{k}",
            engine="ray",
            shard_rows=shard_rows,
            nodes=k,
            node_cpus=node_cpus,
            ray_options={"actors": k, "cpus_per_actor": node_cpus},
        )
        cluster.append({**r, "nodes_declared": k, "rows_per_s": r["rows"] / r["seconds"]})
        print(cluster[-1], flush=True)
    return {
        "local": {**local, "rows_per_s": local["rows"] / local["seconds"]},
        "cluster": cluster,
        "rows": rows,
        "node_cpus": node_cpus,
        "shard_rows": shard_rows,
        "physical_cores": os.cpu_count(),
    }


LOAD = (0.0, 0.0, 0.0)  # set by main(): the machine's load average when the run started


def _head(cmd: str) -> str:
    return (
        f"`{cmd}`, run {time.strftime('%Y-%m-%d')} at commit `{COMMIT}` on "
        f"{os.cpu_count()} CPU threads, load average {LOAD[0]:.1f} at the start (other jobs "
        "share the machine above ~0.5 per thread: times are then rough); ratios come from "
        "one run."
    )


def rss_markdown(r: dict, cmd: str, image_size: int) -> str:
    lines = [
        "## Streamed `tag` output: peak memory (`python -m multitag.bench.stream --part rss`)",
        "",
        _head(cmd),
        "",
        f"`tag --out FOLDER` (local engine, {r['shard_rows']} rows per shard) in a fresh "
        f"process per job, on {r['photos_repeated']} real fashion-products photos repeated "
        f"under new ids, with a tagger trained here at {image_size} px (5 tasks + ImageNet "
        "tags). Peak RSS is the process's `VmHWM` (its own high-water mark; `ru_maxrss` would keep the parent's across fork + exec).",
        "",
        "| rows | seconds | rows/s | peak RSS (MB) |",
        "|---:|---:|---:|---:|",
    ]
    for j in r["jobs"]:
        lines.append(
            f"| {j['rows']} | {j['seconds']:.0f} | {j['rows_per_s']:.0f} | {j['peak_rss_mb']:.0f} |"
        )
    peaks = [j["peak_rss_mb"] for j in r["jobs"]]
    lines += [
        "",
        f"Peak RSS from the smallest to the largest job: {peaks[0]:.0f} -> {peaks[-1]:.0f} MB "
        f"({(peaks[-1] / peaks[0] - 1) * 100:+.1f} %): memory holds one shard of rows, the "
        "model and the input list (and the `(id, digest)` keys already written, on a rerun).",
        "",
    ]
    return "\n".join(lines)


def ray_markdown(r: dict, cmd: str, image_size: int) -> str:
    engines, ratios = r["engines"], r["ratios"]
    local = engines["local"]
    small, large = r["sizes"]
    lines = [
        "## Ray Data engine vs local (`python -m multitag.bench.stream --part ray`)",
        "",
        _head(cmd),
        "",
        f"`tag --out FOLDER` on {small} and {large} distinct real photos, each job in a fresh "
        f"process (tagger trained here at {image_size} px), {r['shard_rows']} rows per shard, "
        "after one untimed warm-up (every photo read once, a 64-row local job), so every timed "
        "job finds the same warm caches. Ray: a local cluster started by the job (its workers at the job's priority; 2 "
        "logical CPUs declared beyond the actors' so Ray's own tasks are not starved), one "
        "run per actor pool, `ray AxC` = A actors x C CPUs (and inference threads) each. "
        "Steady throughput is the slope between the two sizes, start-up the intercept "
        "(imports, model load, Ray start, actor start); the in-run rate is read between the "
        "first and the last shard written by the larger job (start-up left out the other "
        "way; when the results come in one burst, the first shard late, it overstates the "
        "rate).",
        "",
        "| engine | rows | seconds | first shard at (s) | steady rows/s (slope) | in-run rows/s "
        "| start-up (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in engines.items():
        for p in e["points"]:
            first = p.get("first_shard_s")
            in_run = p.get("steady_rows_per_s")
            lines.append(
                f"| {name} | {p['rows']} | {p['seconds']:.1f} | "
                f"{'-' if first is None else f'{first:.1f}'} | {e['steady_rows_per_s']:.0f} | "
                f"{'-' if in_run is None else f'{in_run:.0f}'} | {e['start_up_s']:.1f} |"
            )
    lines.append("")
    for name, q in ratios.items():
        lines.append(
            f"Steady throughput ratio {name} / local on this machine: **{q['steady']:.2f}** "
            f"(slope), **{q['in_run']:.2f}** (in-run); extra fixed start-up: "
            f"**{q['extra_start_up_s']:.1f} s**."
        )
    best = max(ratios, key=lambda name: ratios[name]["steady"])
    ray, ratio = engines[best], ratios[best]["steady"]
    lines.append("")
    if min(local["steady_rows_per_s"], ray["steady_rows_per_s"]) <= 0:
        lines.append(
            "A slope is not positive: the machine's load changed between the two jobs, so the "
            "slope and intercept mean nothing here; read the in-run rates."
        )
    elif ratio < 1:
        lines.append(
            f"On one machine Ray ({best}, the best pool here) never catches up (its steady "
            "rate is lower): stay local. On k such machines the job pays off above about "
            + ", ".join(
                f"{_break_even(local, ray, k):.0f} rows (k={k})"
                for k in (2, 4, 8)
                if _break_even(local, ray, k) > 0
            )
            + " (extra start-up / (1/local rate - 1/(k x Ray rate per machine)))."
        )
    else:
        lines.append(
            f"Ray ({best}) pays off on this machine above about "
            f"{_break_even(local, ray, 1):.0f} rows; on 4 such machines above about "
            f"{_break_even(local, ray, 4):.0f} rows."
        )
    lines += [
        "",
        "Node scaling on a simulated cluster: `--part scaling` (bench/scaling.md).",
        "",
    ]
    return "\n".join(lines)


def scaling_markdown(r: dict, cmd: str, image_size: int) -> str:
    local, base = r["local"], r["cluster"][0]
    c = r["node_cpus"]
    lines = [
        "## Ray on a simulated cluster: throughput vs nodes "
        "(`python -m multitag.bench.stream --part scaling`)",
        "",
        _head(cmd),
        "",
        f"`tag --out FOLDER --engine ray` on {r['rows']} distinct real photos (tagger trained "
        f"here at {image_size} px, {r['shard_rows']} rows per shard) on a "
        "`ray.cluster_utils.Cluster`: a head declaring 1 CPU (left to Ray's read tasks) and k "
        f"nodes declaring {c} CPU(s) each, one actor of {c} CPU(s) / {c} inference thread(s) "
        "per node (the actors cannot share a node). Seconds from the job's start (the "
        "cluster already up); the in-run rate is read between the first and the last shard "
        "written, so actor start-up is left out.",
        "",
        f"**Every simulated node runs on the same {r['physical_cores']} physical cores**: "
        "once the actors' threads outnumber the cores, more nodes cannot add throughput here. "
        "This shows the work spreading over nodes and what Ray costs per node, not how a real "
        "cluster scales (docs/scaling.md plans from per-core rates).",
        "",
        "| nodes | actors x threads | declared CPUs | rows | seconds | in-run rows/s "
        "| vs 1 node | nodes that tagged rows |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in r["cluster"]:
        n = k["nodes_declared"]
        rate, one = k.get("steady_rows_per_s"), base.get("steady_rows_per_s")
        vs = f"{rate / one:.2f}" if rate and one else "-"
        lines.append(
            f"| {n} | {n} x {c} | {1 + n * c} | {k['rows']} | {k['seconds']:.1f} | "
            f"{'-' if rate is None else f'{rate:.0f}'} | {vs} | {k['nodes']} |"
        )
    lr = local.get("steady_rows_per_s")
    lines += [
        "",
        f"Local engine on the same rows, same machine: {local['seconds']:.1f} s, in-run "
        f"{'-' if lr is None else f'{lr:.0f}'} rows/s.",
        "",
    ]
    return "\n".join(lines)


def _break_even(local: dict, ray: dict, k: int) -> float:
    gain = 1 / local["steady_rows_per_s"] - 1 / (k * ray["steady_rows_per_s"])
    extra = ray["start_up_s"] - local["start_up_s"]
    return extra / gain if gain > 0 else -1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data-root", type=Path, default=Path("/work/shared/datasets/fashion-products")
    )
    ap.add_argument("--out", type=Path, default=Path("bench"))
    ap.add_argument("--part", choices=["rss", "ray", "scaling", "all"], default="all")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--rss-rows", default="10000,50000,100000")
    ap.add_argument("--ray-rows", default="1000,5000")
    ap.add_argument(
        "--ray-pools",
        default="2x1,1x2",
        help="Ray actor pools to compare with the local engine, ACTORSxCPUS (ray part)",
    )
    ap.add_argument("--scaling-rows", type=int, default=3000)
    ap.add_argument("--node-cpus", type=int, default=1, help="CPUs each simulated node declares")
    ap.add_argument(
        "--shard-rows", type=int, default=512, help="rows per shard (ray and scaling parts)"
    )
    args = ap.parse_args()
    cmd = "python -m multitag.bench.stream " + " ".join(sys.argv[1:])
    global COMMIT, LOAD
    COMMIT, LOAD = git_commit(), os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        tmp = Path(tmp)
        model, photos = _train(args.data_root, args.image_size, tmp / "model")
        if args.part in ("rss", "all"):
            sizes = [int(n) for n in args.rss_rows.split(",")]
            r = run_rss(model, photos, sizes, tmp)
            write_json(args.out / "stream.json", r)
            write_text(args.out / "stream.md", rss_markdown(r, cmd, args.image_size))
        if args.part in ("ray", "all"):
            small, large = (int(n) for n in args.ray_rows.split(","))
            pools = parse_pools(args.ray_pools)
            r = run_ray(model, photos, small, large, tmp, args.shard_rows, pools)
            write_json(args.out / "ray.json", r)
            write_text(args.out / "ray.md", ray_markdown(r, cmd, args.image_size))
        if args.part in ("scaling", "all"):
            r = run_scaling(model, photos, args.scaling_rows, args.node_cpus, tmp, args.shard_rows)
            write_json(args.out / "scaling.json", r)
            write_text(args.out / "scaling.md", scaling_markdown(r, cmd, args.image_size))


if __name__ == "__main__":
    main()
