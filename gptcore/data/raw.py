"""The layout of data/raw: the contract between the download stage, which writes it
(gptcore.data.sources), and extract_split, which reads it (gptcore.data.documents).

data/raw holds the fetched files as they came, and at its top one file of ours: the manifest,
listing each file's path, the source it came from, its size and sha256. It is not corpus."""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
