"""Run every benchmark, print the tables, write ``bench/results/latest.json``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bench_blackhole, bench_gzip_bomb, bench_overhead

SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "http_overhead": bench_overhead.http_overhead,
    "inprocess_cost": bench_overhead.inprocess_cost,
    "concurrency": bench_overhead.concurrency,
    "blackhole": bench_blackhole.blackhole,
    "gzip_bomb": bench_gzip_bomb.run,
}


def _optional_sections() -> None:
    try:
        from bench import bench_outbox
    except ImportError:
        return
    SECTIONS["outbox"] = bench_outbox.run
    try:
        from bench import bench_domain
    except ImportError:
        return
    SECTIONS["domain_blackhole"] = bench_domain.run


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    _optional_sections()
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller runs (for CI smoke)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--out", default="bench/results/latest.json")
    args = parser.parse_args(argv)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "quick": args.quick,
    }
    print(f"superapp-sdk benchmarks: {meta['date']}, Python {meta['python']}, {meta['machine']}")
    results: dict[str, Any] = {"meta": meta}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print()
        results[name] = fn(args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
