"""How LoKr splits a dimension in two factors, by the rule of LyCORIS and PEFT."""

from __future__ import annotations


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m * n == dimension`` and ``m <= n``: ``(factor, dimension // factor)``
    when ``factor`` divides it; otherwise ``m`` is the divisor reached by stepping through the
    divisors while ``m`` is below its cofactor and not above ``factor`` (-1: no bound), which
    puts the pair near the square root."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m = 1
    for divisor in range(2, dimension + 1):
        if m >= dimension // m:
            break
        if dimension % divisor:
            continue
        if divisor > bound:
            break
        m = divisor
    return min(m, dimension // m), max(m, dimension // m)
