"""Go's sort.Sort (pattern-defeating quicksort, Go 1.19+), so that ranges sorted by a
target order equal targets exactly as etcd does.

etcd sorts a range with Go's unstable sort.Sort: keys with equal versions (or values,
...) come out in the order that algorithm leaves them, which no stable sort reproduces
beyond 12 keys. This is the same algorithm step for step (same comparisons, same swaps,
same pseudo-random pattern breaking), over a list of (sort key, item) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MASK = (1 << 64) - 1
_INCREASING, _DECREASING, _UNKNOWN = 1, 2, 0

Less = Callable[[list[Any], int, int], bool]


def _less_asc(d: list[Any], i: int, j: int) -> bool:
    return bool(d[i][0] < d[j][0])


def _less_desc(d: list[Any], i: int, j: int) -> bool:  # sort.Reverse
    return bool(d[j][0] < d[i][0])


def go_sort(data: list[tuple[Any, Any]], descending: bool = False) -> None:
    """Sort (sort key, item) pairs in place by sort key, as Go's sort.Sort would (with
    sort.Reverse when `descending`)."""
    n = len(data)
    if n > 1:
        _pdqsort(data, _less_desc if descending else _less_asc, 0, n, n.bit_length())


def _swap(d: list[Any], i: int, j: int) -> None:
    d[i], d[j] = d[j], d[i]


def _insertion_sort(d: list[Any], less: Less, a: int, b: int) -> None:
    for i in range(a + 1, b):
        j = i
        while j > a and less(d, j, j - 1):
            _swap(d, j, j - 1)
            j -= 1


def _sift_down(d: list[Any], less: Less, lo: int, hi: int, first: int) -> None:
    root = lo
    while True:
        child = 2 * root + 1
        if child >= hi:
            return
        if child + 1 < hi and less(d, first + child, first + child + 1):
            child += 1
        if not less(d, first + root, first + child):
            return
        _swap(d, first + root, first + child)
        root = child


def _heap_sort(d: list[Any], less: Less, a: int, b: int) -> None:
    first, lo, hi = a, 0, b - a
    for i in range((hi - 1) // 2, -1, -1):
        _sift_down(d, less, i, hi, first)
    for i in range(hi - 1, -1, -1):
        _swap(d, first, first + i)
        _sift_down(d, less, lo, i, first)


def _pdqsort(d: list[Any], less: Less, a: int, b: int, limit: int) -> None:
    was_balanced = was_partitioned = True
    while True:
        length = b - a
        if length <= 12:
            _insertion_sort(d, less, a, b)
            return
        if limit == 0:
            _heap_sort(d, less, a, b)
            return
        if not was_balanced:
            _break_patterns(d, a, b)
            limit -= 1
        pivot, hint = _choose_pivot(d, less, a, b)
        if hint == _DECREASING:
            _reverse_range(d, a, b)
            pivot = (b - 1) - (pivot - a)
            hint = _INCREASING
        if (was_balanced and was_partitioned and hint == _INCREASING
                and _partial_insertion_sort(d, less, a, b)):
            return
        if a > 0 and not less(d, a - 1, pivot):
            a = _partition_equal(d, less, a, b, pivot)
            continue
        mid, was_partitioned = _partition(d, less, a, b, pivot)
        left, right = mid - a, b - mid
        threshold = length // 8
        if left < right:
            was_balanced = left >= threshold
            _pdqsort(d, less, a, mid, limit)
            a = mid + 1
        else:
            was_balanced = right >= threshold
            _pdqsort(d, less, mid + 1, b, limit)
            b = mid


def _partition(d: list[Any], less: Less, a: int, b: int, pivot: int) -> tuple[int, bool]:
    _swap(d, a, pivot)
    i, j = a + 1, b - 1
    while i <= j and less(d, i, a):
        i += 1
    while i <= j and not less(d, j, a):
        j -= 1
    if i > j:
        _swap(d, j, a)
        return j, True
    _swap(d, i, j)
    i += 1
    j -= 1
    while True:
        while i <= j and less(d, i, a):
            i += 1
        while i <= j and not less(d, j, a):
            j -= 1
        if i > j:
            break
        _swap(d, i, j)
        i += 1
        j -= 1
    _swap(d, j, a)
    return j, False


def _partition_equal(d: list[Any], less: Less, a: int, b: int, pivot: int) -> int:
    _swap(d, a, pivot)
    i, j = a + 1, b - 1
    while True:
        while i <= j and not less(d, a, i):
            i += 1
        while i <= j and less(d, a, j):
            j -= 1
        if i > j:
            return i
        _swap(d, i, j)
        i += 1
        j -= 1


def _partial_insertion_sort(d: list[Any], less: Less, a: int, b: int) -> bool:
    i = a + 1
    for _ in range(5):
        while i < b and not less(d, i, i - 1):
            i += 1
        if i == b:
            return True
        if b - a < 50:
            return False
        _swap(d, i, i - 1)
        if i - a >= 2:
            j = i - 1
            while j >= 1:
                if not less(d, j, j - 1):
                    break
                _swap(d, j, j - 1)
                j -= 1
        if b - i >= 2:
            j = i + 1
            while j < b:
                if not less(d, j, j - 1):
                    break
                _swap(d, j, j - 1)
                j += 1
    return False


def _break_patterns(d: list[Any], a: int, b: int) -> None:
    length = b - a
    if length >= 8:
        r = length
        modulus = 1 << length.bit_length()
        idx = a + (length // 4) * 2 - 1
        while idx <= a + (length // 4) * 2 + 1:
            r ^= (r << 13) & _MASK
            r ^= r >> 17
            r ^= (r << 5) & _MASK
            other = r & (modulus - 1)
            if other >= length:
                other -= length
            _swap(d, idx, a + other)
            idx += 1


def _choose_pivot(d: list[Any], less: Less, a: int, b: int) -> tuple[int, int]:
    length = b - a
    swaps = [0]
    i = a + length // 4 * 1
    j = a + length // 4 * 2
    k = a + length // 4 * 3
    if length >= 8:
        if length >= 50:
            i = _median(d, less, i - 1, i, i + 1, swaps)
            j = _median(d, less, j - 1, j, j + 1, swaps)
            k = _median(d, less, k - 1, k, k + 1, swaps)
        j = _median(d, less, i, j, k, swaps)
    if swaps[0] == 0:
        return j, _INCREASING
    if swaps[0] == 12:
        return j, _DECREASING
    return j, _UNKNOWN


def _order2(d: list[Any], less: Less, a: int, b: int, swaps: list[int]) -> tuple[int, int]:
    if less(d, b, a):
        swaps[0] += 1
        return b, a
    return a, b


def _median(d: list[Any], less: Less, a: int, b: int, c: int, swaps: list[int]) -> int:
    a, b = _order2(d, less, a, b, swaps)
    b, c = _order2(d, less, b, c, swaps)
    a, b = _order2(d, less, a, b, swaps)
    return b


def _reverse_range(d: list[Any], a: int, b: int) -> None:
    i, j = a, b - 1
    while i < j:
        _swap(d, i, j)
        i += 1
        j -= 1
