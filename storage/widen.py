"""Widen an INTEGER column to BIGINT on PostgreSQL while the table stays in use.

`ALTER COLUMN … TYPE BIGINT` rewrites the table and every index on it under an ACCESS
EXCLUSIVE lock: no classification can be stored until it ends, which at millions of rows is
minutes. Instead, on a connection in autocommit mode:

1. a BIGINT twin column is added (no rewrite) and a trigger copies the column into it on
   every insert and update;
2. the existing rows are copied in short batches by primary-key range, each its own
   transaction, so writers wait at most one batch's row locks;
3. every index on the column gets a twin on the new column, built CONCURRENTLY, and a NOT
   NULL column gets a CHECK constraint validated without blocking writes;
4. one short transaction (lock_timeout bounded, retried) swaps them: it drops the old
   column (a catalogue change), renames the twin and its indexes into place, moves the
   default, the sequence's ownership, the primary key and the foreign keys over;
5. the foreign keys, re-added NOT VALID in the swap, are validated without blocking
   writes, and the table is vacuumed (the copy left a dead version of every row) and
   analysed (the new column has no statistics yet).

Each step is idempotent, so an interrupted run resumes where it stopped. A table that
forbids UPDATE with a trigger (the audit log) is opened for updates that change nothing
but the twin column while it is filled, and closed again in the swap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, text

log = logging.getLogger(__name__)

SUFFIX = "_wide"


@dataclass(frozen=True)
class Guard:
    """A trigger function that refuses UPDATE on a table: while a twin column is filled it
    is replaced by `relaxed` (which lets through updates that change only the twin) and
    restored to `strict` in the swap."""

    function: str
    strict: str
    relaxed: str


def append_only(function: str, message: str, twin: str) -> Guard:
    body = "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger AS $$ BEGIN {pre}" \
           "RAISE EXCEPTION '{m}'; END; $$ LANGUAGE plpgsql"
    pre = (f"IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - '{twin}' = to_jsonb(OLD) - '{twin}' "
           "THEN RETURN NEW; END IF; ")
    return Guard(function, body.format(f=function, pre="", m=message),
                 body.format(f=function, pre=pre, m=message))


def column_type(conn: Connection, table: str, column: str) -> str | None:
    return conn.execute(text(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = :t AND column_name = :c"),
        {"t": table, "c": column}).scalar()


def widen(conn: Connection, table: str, column: str, *, key: str = "id",
          batch: int = 20_000, guard: Guard | None = None, lock_timeout_ms: int = 300,
          progress: Callable[[str], None] = log.info) -> bool:
    """Make `table.column` BIGINT without a long lock (see the module's text). `conn` must
    be in autocommit mode; `key` is the table's integer primary key, by whose ranges rows
    are copied. Returns False when the column was BIGINT already."""
    twin = column + SUFFIX
    if column_type(conn, table, twin) is None and column_type(conn, table, column) == "bigint":
        for ref_table, name in _unvalidated(conn, table, column):  # a swap's leftovers
            conn.exec_driver_sql(f'ALTER TABLE "{ref_table}" VALIDATE CONSTRAINT "{name}"')
        return False
    _prepare(conn, table, column, twin, guard)
    _copy(conn, table, column, twin, key, batch, progress)
    indexes = _twin_indexes(conn, table, column, twin)
    _not_null_check(conn, table, column, twin)
    t0 = time.monotonic()
    refs = _swap(conn, table, column, twin, indexes, guard, lock_timeout_ms)
    progress(f"{table}.{column}: swapped in {(time.monotonic() - t0) * 1e3:.0f} ms")
    for ref_table, name in refs:
        conn.exec_driver_sql(f'ALTER TABLE "{ref_table}" VALIDATE CONSTRAINT "{name}"')
    # The copy updated every row: vacuumed, the table's visibility map is whole again
    # (index-only scans need it) and its dead rows reusable; analysed, the swapped-in
    # column has statistics (without them the planner guesses). Online, like the rest.
    t0 = time.monotonic()
    conn.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')
    progress(f"{table}: vacuumed in {time.monotonic() - t0:.0f} s")
    progress(f"{table}.{column} is BIGINT")
    return True


def _trigger(table: str, column: str) -> str:
    return f"fsdi_widen_{table}_{column}"[:63]


def _prepare(conn: Connection, table: str, column: str, twin: str, guard: Guard | None
             ) -> None:
    conn.execute(text(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{twin}" BIGINT'))
    fn = _trigger(table, column)
    conn.execute(text(f'CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger AS $$ BEGIN '
                      f'NEW."{twin}" := NEW."{column}"; RETURN NEW; END; $$ LANGUAGE plpgsql'))
    conn.execute(text(f'CREATE OR REPLACE TRIGGER {fn} BEFORE INSERT OR UPDATE ON "{table}" '
                      f'FOR EACH ROW EXECUTE FUNCTION {fn}()'))
    if guard is not None:
        conn.execute(text(guard.relaxed))


def _copy(conn: Connection, table: str, column: str, twin: str, key: str, batch: int,
          progress: Callable[[str], None]) -> None:
    lo, hi = conn.execute(text(f'SELECT min("{key}"), max("{key}") FROM "{table}" '
                               f'WHERE "{twin}" IS NULL AND "{column}" IS NOT NULL')).one()
    if lo is None:
        return
    total, t0, said = hi - lo + 1, time.monotonic(), 0.0
    start = lo
    while start <= hi:
        conn.execute(text(f'UPDATE "{table}" SET "{twin}" = "{column}" WHERE "{key}" >= :a '
                          f'AND "{key}" < :b AND "{twin}" IS NULL'),
                     {"a": start, "b": start + batch})
        start += batch
        share = min(1.0, (start - lo) / total)
        if share - said >= 0.1 or start > hi:
            said = share
            progress(f"{table}.{column}: {share:.0%} of the rows copied "
                     f"({time.monotonic() - t0:.0f} s)")


@dataclass(frozen=True)
class _Index:
    name: str
    twin_name: str
    primary: bool


def _twin_indexes(conn: Connection, table: str, column: str, twin: str) -> list[_Index]:
    """A CONCURRENTLY built twin of every index that names `column`."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_attribute a ON a.attrelid = "
        "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(:t AS regclass) "
        "AND a.attname = :c"), {"t": table, "c": column}).all()
    out = []
    for name, definition, primary in rows:
        twin_name = name[:61] + "_w"
        m = re.fullmatch(r"(CREATE (?:UNIQUE )?INDEX) \S+ (ON .+ USING \w+) \((.*)\)", definition)
        if m is None:
            raise RuntimeError(f"cannot copy index {name}: {definition}")
        cols = [twin if p.strip().strip('"') == column else p.strip()
                for p in m.group(3).split(",")]
        state = conn.execute(text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :n"), {"n": twin_name}).scalar()
        if state is False:  # an interrupted CONCURRENTLY build leaves an invalid index
            conn.exec_driver_sql(f'DROP INDEX CONCURRENTLY "{twin_name}"')
        conn.exec_driver_sql(f'{m.group(1)} CONCURRENTLY IF NOT EXISTS "{twin_name}" '
                             f'{m.group(2)} ({", ".join(cols)})')
        out.append(_Index(name, twin_name, primary))
    return out


def _not_null_check(conn: Connection, table: str, column: str, twin: str) -> None:
    not_null = conn.execute(text(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND "
        "attname = :c"), {"t": table, "c": column}).scalar()
    if not not_null:
        return
    name = f"{twin}_not_null"
    exists = conn.execute(text("SELECT 1 FROM pg_constraint WHERE conname = :n AND "
                               "conrelid = CAST(:t AS regclass)"),
                          {"n": name, "t": table}).scalar()
    if not exists:
        conn.execute(text(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" '
                          f'CHECK ("{twin}" IS NOT NULL) NOT VALID'))
    conn.execute(text(f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{name}"'))


def _foreign_keys(conn: Connection, table: str, column: str
                  ) -> list[tuple[str, str, str, str]]:
    """(table, name, definition, referenced table) of each foreign key from or to
    `table.column`."""
    return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
        "SELECT con.conrelid::regclass::text, con.conname, pg_get_constraintdef(con.oid), "
        "con.confrelid::regclass::text "
        "FROM pg_constraint con JOIN pg_attribute a ON "
        "(con.conrelid = CAST(:t AS regclass) AND a.attrelid = con.conrelid AND "
        " a.attnum = ANY(con.conkey)) OR (con.confrelid = CAST(:t AS regclass) AND "
        " a.attrelid = con.confrelid AND a.attnum = ANY(con.confkey)) "
        "WHERE con.contype = 'f' AND a.attname = :c"), {"t": table, "c": column}).all()]


def _unvalidated(conn: Connection, table: str, column: str) -> list[tuple[str, str]]:
    return [(t, n) for t, n, _, _ in _foreign_keys(conn, table, column)
            if not conn.execute(text("SELECT convalidated FROM pg_constraint WHERE conname = "
                                     ":n AND conrelid = CAST(:t AS regclass)"),
                                {"n": n, "t": t}).scalar()]


def _swap(conn: Connection, table: str, column: str, twin: str, indexes: list[_Index],
          guard: Guard | None, lock_timeout_ms: int) -> list[tuple[str, str]]:
    default = conn.execute(text(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON "
        "a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = CAST(:t AS regclass) "
        "AND a.attname = :c"), {"t": table, "c": column}).scalar()
    sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                            {"t": table, "c": column}).scalar()
    fks = _foreign_keys(conn, table, column)
    not_null = conn.execute(text("SELECT 1 FROM pg_constraint WHERE conname = :n"),
                            {"n": f"{twin}_not_null"}).scalar()
    pkey = conn.execute(text("SELECT conname FROM pg_constraint WHERE contype = 'p' AND "
                             "conrelid = CAST(:t AS regclass)"), {"t": table}).scalar()
    steps = []
    # Every table the swap changes, in one order, before it changes any.
    for t in sorted({table} | {t for t, _, _, _ in fks} | {r for _, _, _, r in fks}):
        steps.append(f'LOCK TABLE "{t}" IN ACCESS EXCLUSIVE MODE')
    steps += [f'ALTER TABLE "{t}" DROP CONSTRAINT "{n}"' for t, n, _, _ in fks]
    if not_null:
        steps += [f'ALTER TABLE "{table}" ALTER COLUMN "{twin}" SET NOT NULL',
                  f'ALTER TABLE "{table}" DROP CONSTRAINT "{twin}_not_null"']
    if default is not None:
        steps.append(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP DEFAULT')
    if sequence is not None:
        steps.append(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    if any(ix.primary for ix in indexes) and pkey:
        steps.append(f'ALTER TABLE "{table}" DROP CONSTRAINT "{pkey}"')
    fn = _trigger(table, column)
    steps += [f'DROP TRIGGER {fn} ON "{table}"', f"DROP FUNCTION {fn}()",
              f'ALTER TABLE "{table}" DROP COLUMN "{column}"',
              f'ALTER TABLE "{table}" RENAME COLUMN "{twin}" TO "{column}"']
    steps += [f'ALTER INDEX "{ix.twin_name}" RENAME TO "{ix.name}"' for ix in indexes]
    for ix in indexes:
        if ix.primary:
            steps.append(f'ALTER TABLE "{table}" ADD CONSTRAINT "{pkey or ix.name}" '
                         f'PRIMARY KEY USING INDEX "{ix.name}"')
    if default is not None:
        steps.append(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {default}')
    if sequence is not None:
        steps += [f'ALTER SEQUENCE {sequence} OWNED BY "{table}"."{column}"',
                  f"ALTER SEQUENCE {sequence} AS BIGINT"]
    steps += [f'ALTER TABLE "{t}" ADD CONSTRAINT "{n}" {d} NOT VALID' for t, n, d, _ in fks]
    if guard is not None:
        steps.append(guard.strict)
    briefly(conn, do_block(steps), lock_timeout_ms)
    return [(t, n) for t, n, _, _ in fks]


def briefly(conn: Connection, statement: str, lock_timeout_ms: int = 300) -> None:
    """Run one statement that takes a strong lock (a DO block is one transaction even on
    an autocommit connection) without holding writers up: it waits at most
    `lock_timeout_ms` for its locks, and tries again after a rest, up to 100 times.
    lock_timeout stays below PostgreSQL's deadlock_timeout (1 s): when it and a writer
    wait on each other, it gives up first and the writer never fails."""
    for attempt in range(100):
        try:
            conn.exec_driver_sql(f"SET lock_timeout = '{lock_timeout_ms}ms'")
            try:
                conn.exec_driver_sql(statement)
            finally:
                conn.exec_driver_sql("RESET lock_timeout")
            return
        except Exception as e:  # a transaction held a table past lock_timeout: try again
            if not re.search("lock timeout|deadlock detected", str(e)) or attempt == 99:
                raise
            time.sleep(min(2.0, 0.05 * (attempt + 1)))


def do_block(steps: list[str]) -> str:
    """`steps` as one DO statement: one transaction."""
    return "DO $swap$ BEGIN " + "".join(f"EXECUTE {_literal(step)}; " for step in steps) \
        + "END $swap$"


def _literal(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"
