"""Stage download: fetch data.source into data/raw/, with data/raw/manifest.json saying what came;
a mixture's data.sources each into data/raw/<name>/.

Downloads in progress live in data/raw.partial/, outside the stage's output, so an interrupted
`dvc repro` continues them where they stopped.
"""

from __future__ import annotations

from pathlib import Path

from gptcore.data.sources import fetch_source, fetch_sources, link_counts
from gptcore.errors import run_main
from gptcore.params import load_section

RAW_DIR = Path("data/raw")


def main() -> None:
    params = load_section("data")
    if params.sources is not None:
        manifest = fetch_sources(params.sources, RAW_DIR)
        for entry in manifest["sources"]:
            print(
                f"{RAW_DIR / entry['name']}: {entry['files']} file(s), {entry['size']:,} bytes "
                f"from {entry['source']}"
            )
        if linked := link_counts(manifest["files"]):
            print(f"{RAW_DIR}: local files {linked}")
        return
    assert params.source is not None  # checked: one of data.source and data.sources is given
    manifest = fetch_source(params.source, RAW_DIR, sha256=params.sha256)
    files = manifest["files"]
    size = sum(entry["size"] for entry in files)
    linked = link_counts(files)
    print(
        f"{RAW_DIR}: {len(files)} file(s), {size:,} bytes from {params.source}"
        + (f" ({linked})" if linked else "")
    )


if __name__ == "__main__":
    run_main(main)
