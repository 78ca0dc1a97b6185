"""Text a peer sends, made safe to print; the rules for names; wrapping to the
terminal's width; sizes and durations for people.
"""

import unicodedata

MAX_NAME_BYTES = 64


def name_problem(name: str) -> str | None:
    """What makes `name` unfit for a username, or None: the rule for our own name, a
    peer's, and each name in known_peers (a '#' would read as a comment there)."""
    if not name:
        return "is empty"
    if name != name.strip():
        return "must not start or end with a space"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if sanitize(name) != name:
        return "must not contain control characters"
    if name.startswith("#"):
        return "must not start with '#'"
    return None


def peer_text(text: str) -> str:
    """A message's text as shown: tabs as spaces, each further line indented, made safe.

    A message may hold several lines (a paste); each line after the first is
    indented like a wrapped row, so it can never pass for a line of its own.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    return f"\n{CONTINUATION}".join(sanitize(line.expandtabs(4)) for line in lines)


def sanitize(text: str) -> str:
    """Peer text made safe to print: control and format characters escaped."""
    if text.isprintable():
        return text
    return "".join(_safe_char(ch) for ch in text)


_JOINERS = frozenset("\u200c\u200d")  # needed by emoji and some scripts
# Rows after the first of a wrapped line, and the further lines of a message,
# start with this, so no row of a peer's text can pass for a line of its own
# (say, "Connection closed by peer.").
CONTINUATION = "  "


def _safe_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if (category[0] == "C" and ch not in _JOINERS) or category in ("Zl", "Zp"):
        return ch.encode("unicode_escape").decode("ascii")
    return ch


def format_size(size: int) -> str:
    """A size as people say it: 512 bytes, 12.3 kB, 2.4 MB, 1.1 GB."""
    if size < 1000:
        return "1 byte" if size == 1 else f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """0.3 s, 42 s, 3:05 (minutes and seconds)."""
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


def progress_text(name: str, done: int, size: int, seconds: float, moved: int) -> str:
    """One transfer's progress: name, percent, bytes, rate (of the `moved` bytes that came in
    `seconds`: a resume's kept bytes do not count) and time left."""
    percent = done * 100 // size if size else 100
    rate = moved / seconds if seconds > 0 else 0.0
    left = f", {format_duration((size - done) / rate)} left" if rate > 0 and done < size else ""
    return (
        f"{name} {percent}% ({format_size(done)} of {format_size(size)}, "
        f"{rate / 1e6:.1f} MB/s{left})"
    )


EMOJI_PRESENTATION = "\ufe0f"  # variation selector 16: the character before it drawn wide


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal: 0 for combining marks, 2 for wide ones.

    Variation selector 16 counts 1, for the column it adds to the character
    before it (❤️ is drawn 2 wide); where a terminal draws narrower than
    counted, a row only wraps early, never past the edge.
    """
    if ch == EMOJI_PRESENTATION:
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def wrap_rows(line: str, width: int) -> list[str]:
    """One line cut into rows of at most `width` columns, continuation rows indented.

    A row ends after its last space when it has one (words stay whole), else
    wherever the width runs out.
    """
    width = max(width, len(CONTINUATION) + 8)
    indent = len(CONTINUATION)
    rows: list[str] = []
    row: list[str] = []
    used = 0
    for ch in line:
        columns = char_width(ch)
        if used + columns > width and used > indent:
            start = indent if rows else 0
            cut = max((i + 1 for i in range(start, len(row)) if row[i] == " "), default=len(row))
            carried = row[cut:]
            if indent + sum(map(char_width, carried)) + columns > width:
                cut, carried = len(row), []  # no room to carry the word: cut it here
            rows.append("".join(row[:cut]))
            row = [CONTINUATION, *carried]
            used = indent + sum(map(char_width, carried))
        row.append(ch)
        used += columns
    rows.append("".join(row))
    return rows


def fit_row(text: str, width: int) -> str:
    """`text` cut to fit one row (short of the last column, which would wrap)."""
    used, kept = 0, []
    for ch in text:
        used += char_width(ch)
        if used >= width:
            break
        kept.append(ch)
    return "".join(kept)


def screen_rows(text: str, width: int) -> int:
    """How many rows the terminal wraps `text` into."""
    return max(1, -(-sum(map(char_width, text)) // max(width, 1)))


def wrap_for_terminal(text: str, width: int) -> str:
    """Every line of `text` wrapped by wrap_rows (the terminal never wraps it itself)."""
    return "\n".join(row for line in text.split("\n") for row in wrap_rows(line, width))
