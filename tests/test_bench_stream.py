"""The Ray part of the streamed-jobs benchmark: one run per actor pool, each against the
same local runs (the jobs themselves are replaced by a fixed-rate model of a job)."""

from __future__ import annotations

import pandas as pd
import pytest

from multitag.bench import stream


def test_pools_parse_as_actors_x_cpus():
    assert stream.parse_pools("2x1, 1x2") == [(2, 1), (1, 2)]
    for bad in ("2", "0x1", "2x", "ax1"):
        with pytest.raises(ValueError, match="ACTORSxCPUS"):
            stream.parse_pools(bad)


def test_every_pool_is_run_and_compared_with_the_same_local_runs(monkeypatch, tmp_path):
    rates = {None: 200.0, (2, 1): 150.0, (1, 2): 190.0}  # rows/s of each engine's jobs
    calls = []

    def job(**args):
        pool = args.get("ray_options")
        key = None if pool is None else (pool["actors"], pool["cpus_per_actor"])
        if args["manifest"].name == "warm-up.csv":  # untimed: its result is not used
            calls.append(("warm-up", len(pd.read_csv(args["manifest"]))))
            return {}
        calls.append((args.get("engine", "local"), key))
        n = int(args["manifest"].name.removeprefix("ray").removesuffix(".csv"))
        start = 5.0 if key is None else 20.0
        return {"rows": n, "seconds": start + n / rates[key], "first_shard_s": start,
                "steady_rows_per_s": rates[key]}  # fmt: skip

    monkeypatch.setattr(stream, "_job", job)
    paths = [tmp_path / f"p{i}.jpg" for i in range(8)]
    for path in paths:
        path.write_bytes(b"photo")
    photos = pd.DataFrame({"id": range(8), "path": [str(p) for p in paths]})
    r = stream.run_ray(tmp_path, photos, 1000, 4000, tmp_path, 512, [(2, 1), (1, 2)])
    # one untimed warm-up over the photos first, then every timed run
    assert (
        calls
        == [("warm-up", 8)] + [("local", None)] * 2 + [("ray", (2, 1))] * 2 + [("ray", (1, 2))] * 2
    )
    assert r["ratios"]["ray 2x1"]["steady"] == pytest.approx(0.75)
    assert r["ratios"]["ray 1x2"]["steady"] == pytest.approx(0.95)
    assert r["ratios"]["ray 1x2"]["extra_start_up_s"] == pytest.approx(15.0)
    text = stream.ray_markdown(r, "python -m multitag.bench.stream --part ray", 224)
    assert "ray 2x1 / local on this machine: **0.75**" in text
    assert "ray 1x2 / local on this machine: **0.95**" in text
    assert "Ray (ray 1x2, the best pool here)" in text
