"""Plain-text tables for people: aligned columns, a rule under the header and above totals."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["text_table"]


def text_table(
    head: Sequence[object],
    body: Sequence[Sequence[object]],
    total: Sequence[object] | None = None,
    *,
    left: Collection[int] = (0,),
) -> list[str]:
    """Lines of a table: header, rule, body rows, then rule and ``total`` if given.

    Columns whose index is in ``left`` are left-aligned, the others right-aligned; columns
    are two spaces apart and trailing blanks are dropped.
    """
    rows = [head, *body, *([total] if total is not None else [])]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]

    def fmt(row: Sequence[object]) -> str:
        cells = [str(c).ljust(w) if i in left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(head))
    out = [fmt(head), rule, *map(fmt, body)]
    if total is not None:
        out += [rule, fmt(total)]
    return out
