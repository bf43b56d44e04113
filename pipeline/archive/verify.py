"""`taid verify ARCHIVE`: is every image still there, byte for byte?

Reads the manifest index's pages whole (checksums: a corrupt index is reported, and the rows then
come from the run partitions), then every latest `ok` row's small file and enhancement layer,
comparing each with the sha256 its row recorded. Nothing is written; `taid compact --repair`
rebuilds a broken index.
"""

from __future__ import annotations

import hashlib
import itertools
from concurrent.futures import ThreadPoolExecutor

from pipeline.manifest import ManifestReader, index_problem, present
from pipeline.storage import filesystem, read_bytes

COLUMNS = ["source_key", "output_uri", "output_sha256", "enhancement_uri", "enhancement_sha256"]


def check_file(uri: str, sha256: str, storage_options: dict | None = None) -> str | None:
    """'missing', 'corrupt' (another sha256) or None when the file is intact."""
    fs, path = filesystem(uri, storage_options)
    try:
        data = read_bytes(fs, path)
    except FileNotFoundError:
        return "missing"
    return None if hashlib.sha256(data).hexdigest() == sha256 else "corrupt"


def verify_archive(archive: str, storage_options: dict | None = None, workers: int = 8) -> dict:
    """{"rows": ok rows checked, "files": files checked, "missing": [...], "corrupt": [...],
    "index": why the index cannot be trusted, or None}. Each listed file is
    {"key", "file", "uri"} with file "small" or "layer"."""
    fs, root = filesystem(archive, storage_options)
    reader = ManifestReader(archive, storage_options, fs=fs, root=root, max_age_s=float("inf"))  # one snapshot
    snap = reader.snapshot()
    if not reader.has_manifest(snap):
        raise FileNotFoundError(f"{archive} has no manifest: not a compress-archive destination")
    report: dict = {"archive": archive, "rows": 0, "files": 0, "missing": [], "corrupt": [],
                    "index": index_problem(fs, snap, full=True)}
    if report["index"] and snap.files:  # never trusted: the rows come from the run partitions
        reader.without_index(report["index"])

    def jobs():
        for t in reader.latest(columns=COLUMNS, ok_only=True):
            for row in t.to_pylist():
                report["rows"] += 1
                yield row["source_key"], "small", row["output_uri"], row["output_sha256"]
                if present(row["enhancement_uri"]):
                    yield row["source_key"], "layer", row["enhancement_uri"], row["enhancement_sha256"]

    def check(job):
        key, what, uri, sha = job
        return key, what, uri, check_file(uri, sha, storage_options)

    todo = jobs()
    with ThreadPoolExecutor(workers) as pool:  # I/O bound: reads overlap; a chunk at a time bounds memory
        while chunk := list(itertools.islice(todo, 1024)):
            for key, what, uri, state in pool.map(check, chunk):
                report["files"] += 1
                if state is not None:
                    report[state].append({"key": key, "file": what, "uri": uri})
    return report


def report_ok(report: dict) -> bool:
    return not (report["missing"] or report["corrupt"] or report["index"])


def report_lines(report: dict) -> list[str]:
    """What `taid verify` prints: each missing or corrupt file, the index's state, the counts."""
    lines = [f"{what}: {f['key']} ({f['file']}) {f['uri']}" for what in ("missing", "corrupt") for f in report[what]]
    if report["index"]:
        lines.append(f"index: {report['index']} (`taid compact --repair` rebuilds it)")
    lines.append(f"{report['rows']} rows, {report['files']} files: {len(report['missing'])} missing, "
                 f"{len(report['corrupt'])} corrupt, index {'broken' if report['index'] else 'ok'}")
    return lines
