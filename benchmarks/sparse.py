"""SparseMaskedLinear: forward + backward time of the sparse path, the dense path and the crossover choice.

For each density from 1% to 50% a 512 x 512 layer (batch 64) is calibrated (the policy picks a
path from its own measurement), then both paths are timed again, alternating, and the chosen
path's time is compared with the faster one. Target: the choice is within 10% of the faster path
at every density.

    python benchmarks/sparse.py
    python benchmarks/sparse.py --size 256 --repeats 5      # smaller and quicker

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lit_psion.nn.sparse import SparseMaskedLinear, random_mask

DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
TARGET = 0.10


def timed(layer: SparseMaskedLinear, path: str, x: torch.Tensor) -> float:
    layer.path = path
    start = time.perf_counter()
    layer(x).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for density in DENSITIES:
        layer = SparseMaskedLinear(args.size, args.size, random_mask(args.size, args.size, density, seed=1))
        chosen = layer.calibrate(batch_size=args.batch)
        x = torch.randn(args.batch, args.size)
        times: dict[str, list[float]] = {"sparse": [], "dense": []}
        for _ in range(args.repeats):
            for path in ("sparse", "dense"):
                times[path].append(timed(layer, path, x))
        medians = {path: statistics.median(t) for path, t in times.items()}
        fastest = min(medians.values())
        rows.append({"density": density, "nnz": layer.nnz, "sparse_ms": round(medians["sparse"] * 1000, 3),
                     "dense_ms": round(medians["dense"] * 1000, 3), "chosen": chosen,
                     "chosen_over_fastest": round(medians[chosen] / fastest, 4)})  # fmt: skip
    worst = max(row["chosen_over_fastest"] for row in rows)
    print(json.dumps({
        "benchmark": "sparse",
        "worst_chosen_over_fastest": worst,
        "target": f"<= {1 + TARGET}",
        "meets_target": worst <= 1 + TARGET,
        "rows": rows,
        "size": args.size, "batch": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
