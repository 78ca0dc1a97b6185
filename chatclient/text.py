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
    if any(is_blank(ch) and ch != " " for ch in name) or "  " in name:
        # Runs of blanks could pad a name into a row that reads as the program's own.
        return "must not hold blanks other than single spaces"
    if any(_invisible(ch) for ch in name):
        return "must not contain invisible characters"
    if unicodedata.normalize("NFKC", name) != name:
        return f"must be written in its plain form ({unicodedata.normalize('NFKC', name)!r})"
    if name.startswith("#"):
        return "must not start with '#'"
    return None


# Characters that print as nothing, or as a blank, and could make two names look one:
# joiners, the combining grapheme joiner, variation selectors (FE00-FE0F, checked by
# range), and fillers (the blank look-alikes are refused as blanks).
_INVISIBLE = frozenset("\u200b\u200c\u200d\u200e\u200f\u034f\u2060\u2061\u2062\u2063\u2064\u180e")

# Letters of other scripts drawn like Latin ones (a small table from Unicode's
# confusables.txt, TS #39): the skeleton maps each to the letter it imitates.
_LOOK_ALIKES = str.maketrans(
    {
        # Cyrillic
        "\u0430": "a",
        "\u0432": "b",
        "\u0435": "e",
        "\u0451": "e",
        "\u043a": "k",
        "\u043c": "m",
        "\u043d": "h",
        "\u043e": "o",
        "\u0440": "p",
        "\u0441": "c",
        "\u0442": "t",
        "\u0443": "y",
        "\u0445": "x",
        "\u0456": "i",
        "\u0457": "i",
        "\u0458": "j",
        "\u0455": "s",
        "\u0501": "d",
        "\u04bb": "h",
        "\u04cf": "l",
        "\u051b": "q",
        "\u051d": "w",
        "\u04af": "y",
        "\u0261": "g",
        # Greek
        "\u03b1": "a",
        "\u03b2": "b",
        "\u03b5": "e",
        "\u03b7": "n",
        "\u03b9": "i",
        "\u03ba": "k",
        "\u03bd": "v",
        "\u03bf": "o",
        "\u03c1": "p",
        "\u03c4": "t",
        "\u03c5": "u",
        "\u03c7": "x",
        "\u03c9": "w",
        # digits and Latin shapes read as letters
        "0": "o",
        "1": "l",
        "|": "l",
        "\u0131": "i",
        "\u0269": "i",
    }
)


def _invisible(ch: str) -> bool:
    return ch in _INVISIBLE or 0xFE00 <= ord(ch) <= 0xFE0F


def name_skeleton(name: str) -> str:
    """What a name looks like, for telling names apart (Unicode TS #39, in small): NFKC,
    case folded, look-alike letters mapped to the Latin ones they imitate, and "rn" read
    as "m". Two names with one skeleton are one name in a room and in known_peers."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    visible = "".join(ch for ch in folded if not _invisible(ch))
    return visible.translate(_LOOK_ALIKES).replace("rn", "m").replace("l", "i")


def peer_text(text: str) -> str:
    """A message's text as shown: tabs as spaces, each further line indented, made safe.

    A message may hold several lines (a paste); each line after the first is
    indented like a wrapped row, so it can never pass for a line of its own.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    return f"\n{CONTINUATION}".join(sanitize(line.expandtabs(4)) for line in lines)


# A run of one escaped character this long or longer is shown once with its count
# (`\x01` then U+00D7 and 4000): what a peer sends cannot grow fourfold on screen and in memory.
RUN_SHOWN_COUNTED = 4


def sanitize(text: str) -> str:
    """Peer text made safe to print: control and format characters escaped."""
    if text.isprintable():
        return text
    parts: list[str] = []
    start, end = 0, len(text)
    while start < end:
        ch = text[start]
        shown = _safe_char(ch)
        stop = start + 1
        if shown is not ch:  # escaped: take the whole run of it
            while stop < end and text[stop] == ch:
                stop += 1
        run = stop - start
        parts.append(f"{shown} \u00d7{run}" if run >= RUN_SHOWN_COUNTED else shown * run)
        start = stop
    return "".join(parts)


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


LONGEST_WAIT = 7 * 86400  # --reconnect-for, and a place a host says it keeps (ABSENT)


def parse_duration(text: str) -> float:
    """`--reconnect-for`: seconds, or with a unit (90, 90s, 10m, 1h); ValueError saying
    what is wrong."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    scale = units.get(value[-1:], 0)
    number = value[:-1] if scale else value
    scale = scale or 1
    if not number.isascii() or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r} is not a duration: use seconds, or 90s, 10m, 1h")
    seconds = float(number) * scale
    if seconds > LONGEST_WAIT:
        raise ValueError(f"{text!r} is over a week")
    return seconds


def spoken_duration(seconds: float) -> str:
    """A span as a sentence says it: 45 s, 10 minutes, 1 minute 30 s, 2 hours."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole % 3600 == 0:
        hours = whole // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes, rest = divmod(whole, 60)
    said = f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{said} {rest} s" if rest else said


def progress_text(name: str, done: int, size: int, seconds: float, moved: int) -> str:
    """One transfer's progress: name, percent, bytes, rate (of the `moved` bytes that came in
    `seconds`: a resume's kept bytes do not count) and time left."""
    percent = done * 100 // size if size else 100
    rate = moved / seconds if seconds > 0 else 0.0
    if rate <= 0:  # no time has passed yet (the first chunk goes with the accept): no rate
        return f"{name} {percent}% ({format_size(done)} of {format_size(size)})"
    left = f", {format_duration((size - done) / rate)} left" if done < size else ""
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


# Characters drawn as blank space: a row may break at them, and a "word" (which may go
# out longer than a row, for the terminal to wrap) never holds one, so no part of a
# word the terminal wraps can pass for a line of the program's own.
_BLANK_LOOKALIKES = frozenset("\u2800\u3164\uffa0\u115f\u1160")


def is_blank(ch: str) -> bool:
    """True for a character drawn as blank space (any Unicode space, and look-alikes)."""
    return ch.isspace() or unicodedata.category(ch) == "Zs" or ch in _BLANK_LOOKALIKES


def split_words(line: str) -> list[str]:
    """`line` as alternating runs of blanks and of other characters (words)."""
    runs: list[str] = []
    for ch in line:
        if runs and is_blank(runs[-1][-1]) == is_blank(ch):
            runs[-1] += ch
        else:
            runs.append(ch)
    return runs


def wrap_rows(line: str, width: int) -> list[str]:
    """One line cut into rows of at most `width` columns, continuation rows indented.

    Rows break only at blanks, so words (and links) stay whole and copy whole; a row
    keeps the blank after its last word. A word wider than a row goes out whole where
    it starts, for the terminal to wrap; the next word starts a new indented row, so
    nothing after such a word can reach column 0 of a row the terminal wrapped, and
    the word itself holds no blank to fake a line of the program's with. No
    character is added or dropped but the indents.
    """
    width = max(width, len(CONTINUATION) + 8)
    indent = len(CONTINUATION)
    rows: list[str] = []
    row, used = "", 0
    after_long = False  # the row holds a word wider than a row: the next word goes below
    runs = split_words(line)
    for number, run in enumerate(runs):
        if is_blank(run[0]):
            for ch in run:
                columns = char_width(ch)
                if not after_long and used + columns > width:
                    rows.append(row)
                    row, used = CONTINUATION, indent
                row, used = row + ch, used + columns
            continue
        # A word fits with the blank after it, so that blank ends its row, not the next.
        columns = sum(map(char_width, run))
        needed = columns + (1 if number + 1 < len(runs) else 0)
        empty = used == (indent if rows else 0)
        moves_down = used + needed > width and not empty and indent + columns <= width
        if after_long or moves_down:
            rows.append(row)
            row, used = CONTINUATION, indent
        row, used = row + run, used + columns
        after_long = used > width
    rows.append(row)
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
