"""Reading the adapters' archives and tables with exact rules, so damage is one clear line and never a traceback.

An archive or table that cannot be read as a whole (empty, truncated, not gzip, no header) is one ``ValueError``
naming the file (the CLIs print it and exit 2). Inside an archive, members are matched to ids by an exact pattern:
absolute or traversal names (``/tmp/x.txt``, ``../../x.txt``) refuse the archive, as do two members of one id
(naming both); other members are not records and are listed in a warning. A table's bad cells are left to the
adapter, which fails or blanks that row with a reason.
"""
from __future__ import annotations

import csv
import io
import logging
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from stores.errors import InputError

log = logging.getLogger("medmix.datasets")
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)
TABLE_CELL_LIMIT = 64 << 20     # a long table cell is one row's problem (the note cap), not the run's


def rules_version(version: str, spec) -> str:
    """An adapter's version with its dataset's plausibility rules folded in: rules shape every row, so they enter
    every expert's config hash (a changed range re-embeds)."""
    import hashlib
    rules = sorted((k, r.model_dump()) for k, r in spec.plausible.items())
    return f"{version}+{hashlib.sha256(repr(rules).encode()).hexdigest()[:8]}" if rules else version


def unreadable(path: Path, exc: BaseException) -> InputError:
    """The whole file cannot be read: one line naming it (exit 2 at the CLI)."""
    return InputError(f"{path}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


def member_id(name: str, pattern: re.Pattern, archive: Path) -> str | None:
    """The id a member names under ``pattern`` (group 1), or None; absolute and traversal names refuse the archive."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or ":" in p.parts[0]:
        raise InputError(f"{archive}: member {name[:120]!r} is an absolute or traversal path: archive refused")
    m = pattern.fullmatch(str(p))
    return m[1] if m else None


def tar_records(path: Path, pattern: re.Pattern, rule: str, wanted=None) -> dict[str, bytes]:
    """id -> bytes of every member whose name fully matches ``pattern`` (``rule`` says it in words); ``wanted``:
    a predicate on the id (members not wanted are not read)."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    out, where, other = {}, {}, []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key = member_id(m.name, pattern, path)
                if key is None:
                    other.append(m.name)
                    continue
                if key in where:
                    raise InputError(f"{path}: members {where[key]!r} and {m.name!r} both name id {key}: refused")
                where[key] = m.name
                if wanted is None or wanted(key):
                    out[key] = tar.extractfile(m).read()
    except ARCHIVE_ERRORS as exc:
        raise unreadable(path, exc) from None
    if other:
        log.warning("%s: %d member(s) not named %s ignored (not records): %s", path.name, len(other), rule, other[:3])
    if not where:
        raise InputError(f"{path}: no member named {rule}")
    return out


def read_table(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """A CSV table's rows as dicts (a UTF-8 BOM is ignored); a row of the wrong length gets ``__error__`` (the adapter
    fails or blanks that row). Empty, undecodable or header-less tables are one line naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path}: empty table (0 bytes of data)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 (byte {exc.start:,})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    old_limit = csv.field_size_limit(TABLE_CELL_LIMIT)      # for this table only (records keep the default)
    try:
        header = next(reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}: header lacks column(s) {missing} (has {header[:8]})")
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            row = dict(zip(header, cells))
            if len(cells) != len(header):
                row["__error__"] = f"{path.name}: line {reader.line_num}: {len(cells)} fields, header has {len(header)}"
            rows.append(row)
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: {exc}") from None
    finally:
        csv.field_size_limit(old_limit)
    return rows
