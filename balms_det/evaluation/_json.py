"""JSON reading for the evaluation: orjson when installed (several times faster than the
standard library), the standard library otherwise; a large array of results is read in chunks
and in byte ranges that several processes can read at once.

A chunk of an array is cut after a '}' followed by ',' and '{'. The cut is accepted only when
``'[' + chunk + ']'`` parses, which proves that it lies between two top-level elements: the
chunk starts at an element, and a cut inside a string or a nested object cannot parse. The
first byte range starts after the '['; every later one starts at such a candidate, and the range
before it proves the candidate when its last piece parses.
"""

import json
import os
import re

try:  # optional: several times faster; the standard library gives the same values
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    orjson = None

__all__ = ["loads", "read_file", "array_ranges", "iter_array", "BadJSON", "HAVE_ORJSON"]

HAVE_ORJSON = orjson is not None
# orjson is fastest on pieces of a few hundred KB (they stay in the CPU caches)
CHUNK_BYTES = 1 << 18
SCAN_CHUNK_BYTES = 1 << 22  # a scanner (see iter_array) makes no object per element: larger
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_WS = b" \t\r\n"


class BadJSON(ValueError):
    """Malformed JSON; ``offset`` is the byte offset in the file near which it was found."""

    def __init__(self, message, offset=None):
        super().__init__(message)
        self.offset = offset


def loads(data):
    """Parse JSON text (bytes or str). orjson first; the standard library where orjson refuses
    what Python's json accepts (NaN / Infinity literals, integers beyond 64 bits, lone
    surrogates), so that both give the same values and a NaN reaches the validators. Text
    nested too deeply for the standard library (its recursion limit) is BadJSON, as any other
    text that does not parse (a ValueError)."""
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(data)
    except RecursionError:
        raise BadJSON("nested too deeply") from None


def read_file(path):
    """The JSON value of a file; raises BadJSON (with the reason) when it does not parse."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadJSON(str(e)) from None


def _array_bounds(path):
    """(first, end): the byte offset just after the array's '[' and that of its closing ']';
    None when the file does not hold a JSON array (any other value, or an empty file)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first = 0
        while True:
            block = f.read(1 << 16)
            if not block:
                return None
            stripped = block.lstrip(_WS)
            if stripped:
                break
            first += len(block)
        if not stripped.startswith(b"["):
            return None
        first += len(block) - len(stripped) + 1
        end = size
        while end > first:
            n = min(1 << 16, end - first)
            f.seek(end - n)
            stripped = f.read(n).rstrip(_WS)
            if stripped:
                if not stripped.endswith(b"]"):
                    return None
                return first, end - n + len(stripped) - 1
            end -= n
    return None


def array_ranges(path, parts):
    """Split the JSON array of ``path`` into at most ``parts`` byte ranges ``(start, stop,
    last)`` for :func:`iter_array`; None when the file does not hold a JSON array."""
    bounds = _array_bounds(path)
    if bounds is None:
        return None
    first, end = bounds
    starts = [first]
    if parts > 1 and end - first > 2 * CHUNK_BYTES:
        with open(path, "rb") as f:
            for k in range(1, parts):
                pos = first + (end - first) * k // parts
                if pos <= starts[-1]:
                    continue
                f.seek(pos)
                window = f.read(1 << 20)
                m = _BOUNDARY.search(window)
                if m is None:
                    continue
                cand = pos + m.end() - 1  # the '{' of the next element
                if starts[-1] < cand < end:
                    starts.append(cand)
    stops = starts[1:] + [end]
    return [(s, e, i == len(starts) - 1) for i, (s, e) in enumerate(zip(starts, stops))]


def _parse_piece(piece, offset, transform=None, scan=None):
    """(elements, original) of ``'[' + piece + ']'``: ``scan`` (bytes -> object or None) may
    read the piece instead, ``transform`` (bytes -> bytes or None) rewrite it first; ``original``
    is the piece when its rewrite was parsed, else None. BadJSON when it does not parse."""
    if scan is not None:
        got = scan(piece)
        if got is not None:
            return got, None
    if transform is not None:
        fast = transform(piece)
        if fast is not None:
            try:
                return loads(b"[" + fast + b"]"), piece
            except (ValueError, UnicodeDecodeError):
                pass
    try:
        return loads(b"[" + piece + b"]"), None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadJSON(str(e), offset) from None


def iter_array(path, start, stop, last, transform=None, chunk_bytes=None, scan=None):
    """Yield ``(elements, original)`` for the byte range ``[start, stop)`` of a JSON array (from
    :func:`array_ranges`), a chunk at a time.

    ``transform`` may rewrite a chunk's text before it is parsed (it must keep the text valid
    exactly when it was, and every value the caller reads); ``original`` is then the chunk's
    text, so that the caller can parse it as it is. ``scan`` may read a chunk instead of the
    parser: it returns what to yield (with ``original`` None), only for text that is valid
    JSON, or None to leave the chunk to the parser. A range that is not ``last`` must end with
    ', ' before the next range's first element; its last piece proves that boundary. Raises
    BadJSON when the range does not parse."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    with open(path, "rb") as f:
        f.seek(start)
        remaining = stop - start
        buf = b""
        base = start  # file offset of buf[0]
        while True:
            if remaining > 0:
                more = f.read(min(chunk_bytes, remaining))
                remaining -= len(more)
                buf = buf + more if buf else more
            if remaining <= 0:
                piece = buf.rstrip(_WS)
                if not last:
                    if not piece.endswith(b","):
                        raise BadJSON("no ',' between two elements", base + len(piece))
                    piece = piece[:-1].rstrip(_WS)
                if piece:
                    yield _parse_piece(piece, base, transform, scan)
                elif not last or base != start:
                    raise BadJSON("an element is missing", base)
                return
            window = max(0, len(buf) - (1 << 16))
            marks = list(_BOUNDARY.finditer(buf, window))
            if not marks and window:
                marks = list(_BOUNDARY.finditer(buf))
            view = memoryview(buf) if scan is not None else buf  # a scanner takes a view
            for m in reversed(marks[-8:]):
                try:
                    parsed = _parse_piece(view[: m.start() + 1], base, transform, scan)
                except BadJSON:
                    continue  # not between two top-level elements: try an earlier one
                yield parsed
                parsed = None
                cut = m.end() - 1
                buf = buf[cut:]
                base += cut
                break
