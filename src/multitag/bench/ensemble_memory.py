"""Peak memory of a tagger ensemble with every member's engine kept vs released per pass.

    python -m multitag.bench.ensemble_memory MODEL_DIR MODEL_DIR [...] \
        [--data-root ../shared/datasets/fashion-products] [--n 640] [--out bench]

Each mode runs in a fresh process: load the saved taggers as a :class:`TaggerEnsemble`, tag
``n`` catalogue photos (no feature cache), report the peak resident memory and the wall time.
"keep" holds every member's inference engine (what a service wants), "release" frees each
after its pass (``release_engines``, what the CLI's batch commands use). Both must give the
same probabilities. Writes ``ensemble-memory.json`` and ``ensemble-memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("keep", "release")


def _child(mode: str, models: list[str], paths_file: str, out: str) -> None:
    from multitag.tagger.ensemble import TaggerEnsemble
    from multitag.tagger.loading import load_tagger

    paths = Path(paths_file).read_text().splitlines()[: 8 if mode == "warm-up" else None]
    ensemble = TaggerEnsemble([load_tagger(m) for m in models])
    ensemble.set_params(runtime__progress=False)
    ensemble.release_engines = mode == "release"
    start = time.perf_counter()
    proba = ensemble.predict_proba(paths)["proba"]
    seconds = time.perf_counter() - start
    np.savez(out, **proba)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_gb": round(peak_kib / 2**20, 2), "seconds": round(seconds, 1)}))


def run(models: list[Path], data_root: Path, n: int, out_dir: Path) -> dict:
    from multitag.data.manifest import load_manifest

    frame = load_manifest(data_root / "styles.csv", data_root / "images")
    paths = frame["path"].sample(n=min(n, len(frame)), random_state=0).tolist()
    result: dict = {"members": [m.name for m in models], "photos": len(paths), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths_file = Path(tmp, "paths.txt")
        paths_file.write_text("\n".join(paths))
        for mode in ("warm-up", *MODES):  # warm-up: fills the engines' conversion cache
            cmd = [
                sys.executable,
                "-m",
                "multitag.bench.ensemble_memory",
                "--child",
                mode,
                "--paths",
                str(paths_file),
            ]
            cmd += ["--proba", str(Path(tmp, f"{mode}.npz")), *map(str, models)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{mode} run failed:\n{done.stderr[-2000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            print(mode, measured, flush=True)
            if mode in MODES:
                result["modes"][mode] = measured
        keep, release = (np.load(Path(tmp, f"{m}.npz")) for m in MODES)
        result["max_abs_proba_diff"] = float(max(np.abs(keep[t] - release[t]).max() for t in keep))
    modes = result["modes"]
    result["peak_ratio_release_to_keep"] = round(
        modes["release"]["peak_rss_gb"] / modes["keep"]["peak_rss_gb"], 3
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ensemble-memory.json").write_text(json.dumps(result, indent=2))
    rows = [f"| {m} | {modes[m]['peak_rss_gb']:.2f} | {modes[m]['seconds']:.1f} |" for m in MODES]
    (out_dir / "ensemble-memory.md").write_text(
        "## Tagger ensemble memory (`python -m multitag.bench.ensemble_memory`)\n\n"
        f"{len(models)} members ({', '.join(result['members'])}), {len(paths)} catalogue "
        'photos, no feature cache, one process per mode. "keep" holds every member\'s '
        'inference engine; "release" (`TaggerEnsemble.release_engines`, the CLI\'s batch '
        "commands) frees each after its pass. Largest probability difference between the "
        f"modes: {result['max_abs_proba_diff']:.1e}; peak ratio release / keep: "
        f"{result['peak_ratio_release_to_keep']}. Machine: {platform.machine()}, "
        f"{os.cpu_count()} threads, {time.strftime('%Y-%m-%d')}.\n\n"
        "| mode | peak RSS (GB) | seconds |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument(
        "--data-root", type=Path, default=Path("../shared/datasets/fashion-products")
    )
    parser.add_argument("--n", type=int, default=640)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--child", choices=("warm-up", *MODES), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--proba", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, [str(m) for m in args.models], args.paths, args.proba)
        return
    if len(args.models) < 2:
        parser.error("pass two or more saved taggers")
    run(args.models, args.data_root, args.n, args.out)


if __name__ == "__main__":
    main()
