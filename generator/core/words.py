"""How messages say a number of things: "1 route", "2 routes", "0 routes"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and the noun that agrees with it: the singular for exactly 1, else the plural
    (`noun` + "s" unless given).

    >>> counted(1, "route"), counted(2, "route"), counted(0, "site file")
    ('1 route', '2 routes', '0 site files')
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
