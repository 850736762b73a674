"""Stage download_benchmarks: fetch benchmark.source (the OLMES suite's wheel) into data/benchmarks/.

Fetched once, hashed in dvc.lock like the corpus: the benchmark stage then reads its request files
offline, and a change of `benchmark.source` is the only thing that fetches again.
"""

from __future__ import annotations

from pathlib import Path

from gptcore.data.sources import fetch_source
from gptcore.errors import run_main
from gptcore.params import load_section

SUITE_DIR = Path("data/benchmarks")


def main() -> None:
    params = load_section("benchmark")
    manifest = fetch_source(params.source, SUITE_DIR)
    size = sum(entry["size"] for entry in manifest["files"])
    print(f"{SUITE_DIR}: {len(manifest['files'])} file(s), {size:,} bytes from {params.source}")


if __name__ == "__main__":
    run_main(main)
