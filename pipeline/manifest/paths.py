"""Where a manifest row's files are: paths relative to the archive root.

An archive row names its small file (`output_uri`) and enhancement layer (`enhancement_uri`) by
their path under the archive root, e.g. `2024/cat.jpg.webp`, so a copied or moved archive reads
its own files. Archives written before name them by absolute URI (`s3://bucket/archive/2024/
cat.jpg.webp`, `/data/archive/...`): readers take those as they are, and compaction rewrites the
index's rows relative (`relativize`). Readers hand rows out resolved (`resolve_row`,
`resolve_table`): callers always get a URI they can open.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.manifest.rows import present
from pipeline.storage import protocol_prefix

PATH_COLUMNS = ("output_uri", "enhancement_uri")
KEY = "source_key"


def archive_base(fs, root: str) -> str:
    """The prefix that a relative path in a row is joined to: the archive's URI and a slash."""
    return protocol_prefix(fs) + root.rstrip("/") + "/"


def is_relative(path) -> bool:
    return present(path) and "://" not in path and not path.startswith("/")


def resolve_row(row: dict, base: str) -> dict:
    """`row` with its file columns as URIs: a relative path joined to `base`, an absolute URI
    (an archive written before paths were relative) as it is."""
    out = dict(row)
    for c in PATH_COLUMNS:
        if is_relative(out.get(c)):
            out[c] = base + out[c]
    return out


def resolve_table(t: pa.Table, base: str) -> pa.Table:
    """resolve_row for a table."""
    for c in PATH_COLUMNS:
        if c in t.column_names:
            col = t.column(c)
            relative = pc.invert(pc.or_(pc.match_substring(col, "://"), pc.starts_with(col, "/")))
            joined = pc.binary_join_element_wise(pa.scalar(base), col, "")
            t = t.set_column(t.column_names.index(c), c, pc.if_else(relative, joined, col))
    return t


def relative_path(uri, key: str, base: str):
    """The archive-relative path of a row's file URI. Under `base`: the rest of it. Elsewhere (an
    archive copied from there): the writer's layout puts a file at KEY + a suffix under its root,
    so the path is that tail. Relative paths and URIs of no known layout come back unchanged."""
    if not present(uri) or is_relative(uri):
        return uri
    if uri.startswith(base):
        return uri[len(base):]
    i = uri.rfind("/" + key)
    if i >= 0 and "/" not in uri[i + 1 + len(key):]:
        return uri[i + 1:]
    return uri


def relativize(t: pa.Table, base: str) -> pa.Table:
    """Rows with their file columns relative to the archive root (see relative_path)."""
    for c in PATH_COLUMNS:
        if c not in t.column_names:
            continue
        col = t.column(c)
        absolute = pc.or_(pc.match_substring(col, "://"), pc.starts_with(col, "/")).fill_null(False)
        if not pc.any(absolute).as_py():
            continue
        keys = t.column(KEY).to_pylist()
        values = [relative_path(u, k, base) for u, k in zip(col.to_pylist(), keys)]
        t = t.set_column(t.column_names.index(c), c, pa.array(values, col.type))
    return t
