"""The only pieces of SQL text the warehouse composes: checked identifiers, types, predicates.

Values and paths always travel as parameters. What cannot be a parameter (a table or column
name, a column type, the WHERE of a partition replacement) comes from code or the indicator
spec, and passes through here first, so a stray quote or a pasted value fails loudly instead
of becoming SQL. Predicates are also stored in `replica_log` and replayed into the replica,
so they are checked again when read back.
"""

from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Column types the writer may add (indicator columns are DOUBLE or BOOLEAN).
COLUMN_TYPES = frozenset({"BOOLEAN", "DOUBLE", "BIGINT", "INTEGER", "VARCHAR", "TIMESTAMPTZ"})
# A predicate is column names, comparisons, AND/OR/NOT/IN/IS/NULL/BETWEEN, parentheses,
# commas and `?` placeholders: no literal of any kind, no statement separator, no comment.
_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(<=|>=|<>|!=|=|<|>|\?|\(|\)|,))")


def _short(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def ident(name: str, what: str = "identifier") -> str:
    """`name` double-quoted for SQL, once it is known to be a plain identifier."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ValueError(
            f"{what} {_short(str(name))} is not a plain SQL name: use letters, digits and _, "
            "starting with a letter or _ (at most 63 characters)"
        )
    return f'"{name}"'


def column_type(sql_type: str) -> str:
    """`sql_type` if it is one the warehouse adds columns of."""
    if sql_type.upper() not in COLUMN_TYPES:
        raise ValueError(
            f"column type {_short(sql_type)} is not one of {sorted(COLUMN_TYPES)}; "
            "add it to warehouse.identifiers.COLUMN_TYPES if it is really needed"
        )
    return sql_type.upper()


def predicate(text: str) -> str:
    """`text` if it is a WHERE made of names, comparisons and `?` placeholders only."""
    if not text.strip():
        raise ValueError("empty predicate: say which rows are replaced, e.g. 'run_id = ?'")
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if not text[pos:].strip():
                break
            raise ValueError(
                f"predicate {_short(text)} has {_short(text[pos:].lstrip())} where only column "
                "names, comparisons, AND/OR/IN and ? placeholders may stand: pass values as "
                "parameters"
            )
        pos = m.end()
    return text
