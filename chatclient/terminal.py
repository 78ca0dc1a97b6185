"""All reading and printing: the Terminal keeps a half-typed line intact while
lines arrive, and the status row above the prompt.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TextIO, Union

from .text import fit_row, screen_rows, wrap_for_terminal

# Lines waiting for a screen that does not take them; more are counted, not kept.
MAX_WAITING_LINES = 100_000
# ... and at most this much text (characters): a line can be 64 KiB and more once escaped.
MAX_WAITING_CHARACTERS = 16 * 1024 * 1024
# Queued like a line, to ring the terminal bell after the lines before it.
BELL = "\a"


class StatusText(str):
    """Queued like a line: the new text of the status row above the prompt ('' clears it)."""


class Whole(str):
    """A line of the program's own that is never wrapped here: a command to copy. The
    terminal wraps it if it must, and a copy of a wrapped row comes out whole."""


# --- Terminal ----------------------------------------------------------------


class Later:
    """A line whose text is made where it is printed, not by the thread that shows it:
    work that must not slow the network thread (checking a signature) is done here."""

    def __init__(self, make: Callable[[], str], size: int) -> None:
        self.make, self.size = make, size

    def __len__(self) -> int:  # what it weighs in the queue, before it is made
        return self.size


Line = Union[str, "Later"]


class Terminal:
    """All reading and printing; keeps the half-typed line intact on a terminal.

    When stdin or stdout is not a terminal, output stays plain lines.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.interactive = stdin.isatty() and stdout.isatty()
        self._lock = threading.RLock()
        self._prompt: str | None = None
        self._line_buffer: Callable[[], str] = str
        self._redraw: Callable[[], None] | None = None
        self._clear_line: Callable[[], None] | None = None
        self._main = threading.get_ident()
        self._relay = False  # lines from other threads are printed by the main thread
        self._posted: list[tuple[Line, TextIO, threading.Event]] = []
        self._posted_lock = threading.RLock()  # RLock: a signal handler may nest
        self._printing_posted = False
        # Lines from other threads wait here for the printer thread, so the network
        # thread never waits for a screen (paused with Ctrl-S, or a pipe nobody reads).
        self._waiting: deque[tuple[Line, TextIO]] = deque()
        self._waiting_cond = threading.Condition()
        self._unshown = 0  # lines dropped while MAX_WAITING_LINES waited
        self._waiting_characters = 0  # the size of what waits, bounded too
        self._printing = False  # the printer thread has lines in hand
        self._printer: threading.Thread | None = None
        self._status = ""  # the status row (file progress), drawn above the prompt
        self._status_shown = False
        if self.interactive:
            self._load_readline()

    def _load_readline(self) -> None:
        # Imported only on terminals: importing readline may emit escape sequences.
        try:
            import readline
        except ImportError:
            return
        self._line_buffer = readline.get_line_buffer
        self._readline = readline
        # CPython turns bracketed paste off; on, the terminal marks a paste, and
        # readline takes it as one line with its newlines: one message.
        with contextlib.suppress(Exception):
            readline.parse_and_bind("set enable-bracketed-paste on")
        # readline is not thread-safe and Python runs it without the GIL, so
        # another thread must never redraw: lines from other threads are handed
        # to the main thread, whose signal handler runs between keypresses.
        if main_thread_can_be_signalled():
            signal.signal(signal.SIGUSR2, self._print_posted)
            self._relay = True
        try:  # readline's own full redraw keeps the cursor where the user left it
            import ctypes  # only here, on a terminal (2 ms of start-up elsewhere)

            library = ctypes.CDLL(readline.__file__)
            new_line, forced = library.rl_on_new_line, library.rl_forced_update_display
        except (ImportError, OSError, AttributeError):
            return

        def redraw() -> None:
            new_line()
            forced()

        self._redraw = redraw
        with contextlib.suppress(AttributeError):  # readline 7 and later
            self._clear_line = library.rl_clear_visible_line

    def complete_with(self, candidates: Callable[[str], list[str]]) -> None:
        """Tab completes the whole line so far with `candidates(line)` (names may hold
        spaces, so readline's word breaks are turned off)."""
        readline = getattr(self, "_readline", None)
        if readline is None:
            return
        found: list[str] = []

        def complete(text: str, state: int) -> str | None:
            if state == 0:
                found[:] = candidates(readline.get_line_buffer())
            return found[state] if state < len(found) else None

        readline.set_completer_delims("")
        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")

    def show(self, line: Line, stream: TextIO | None = None) -> None:
        """Print a line; on a terminal, redraw the prompt and typed text below it.

        From another thread the line is only queued: the printer thread prints it
        (through the main thread on a terminal), in order, however slow the screen.
        """
        out = stream or self.stdout
        if threading.get_ident() == self._main:
            self.flush()  # what other threads queued comes first
            self._print(line, out)
            return
        with self._waiting_cond:
            too_much = self._waiting_characters + len(line) > MAX_WAITING_CHARACTERS
            if len(self._waiting) >= MAX_WAITING_LINES or too_much:
                self._unshown += 1
                return
            self._waiting.append((line, out))
            self._waiting_characters += len(line)
            self._waiting_cond.notify()
            if self._printer is None:
                self._printer = threading.Thread(target=self._print_waiting, daemon=True)
                self._printer.start()

    def flush(self) -> None:
        """On the main thread: print every line other threads have queued, in order.

        The printer thread moves lines only under _posted_lock, held here throughout, so
        none can slip from one queue to the other behind this loop's back.
        """
        with self._lock, self._posted_lock:
            while True:
                if self._posted:  # the printer thread's line in flight goes first
                    line, out, printed = self._posted.pop(0)
                    try:
                        self._print(line, out)
                    finally:
                        printed.set()
                elif (item := self._next_waiting()) is not None:
                    self._print(*item)
                else:
                    return

    def _next_waiting(self) -> tuple[Line, TextIO] | None:
        with self._waiting_cond:
            if self._unshown:
                count, self._unshown = self._unshown, 0
                return f"({count} lines were not shown: the screen was not taking them)", (
                    self.stderr
                )
            if not self._waiting:
                return None
            line, out = self._waiting.popleft()
            self._waiting_characters -= len(line)
            return line, out

    def _print_waiting(self) -> None:
        while True:
            with self._waiting_cond:
                self._waiting_cond.wait_for(lambda: bool(self._waiting or self._unshown))
                self._printing = True
            if self._relay:
                self._post_waiting()
            else:
                with self._lock:  # taken and printed as one step: flush() keeps the order
                    while (item := self._next_waiting()) is not None:
                        self._print(*item)
            with self._waiting_cond:
                self._printing = bool(self._waiting or self._unshown)
                self._waiting_cond.notify_all()

    def wait_shown(self, timeout: float) -> None:
        """Off the main thread: wait until the lines queued so far are out (or `timeout`)."""
        with self._waiting_cond:
            self._waiting_cond.wait_for(
                lambda: not (self._waiting or self._unshown or self._printing), timeout
            )

    def _post_waiting(self) -> None:
        """Hand the waiting lines to the main thread one by one, each once it is printed."""
        while True:
            printed = threading.Event()
            with self._posted_lock:  # taken and posted as one step: flush() keeps the order
                if (item := self._next_waiting()) is None:
                    return
                self._posted.append((*item, printed))
            signal_until(self._main, signal.SIGUSR2, printed)

    def _print_posted(self, signum: int, frame: FrameType | None) -> None:
        if self._printing_posted:  # a nested signal: the outer call prints in order
            return
        # The poster waits for each line's `printed`: Ctrl-C must not land between
        # taking a line and setting it, so SIGINT waits until these lines are out.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._printing_posted = True
        try:
            while True:
                with self._posted_lock:
                    if not self._posted:
                        return
                    line, out, printed = self._posted.pop(0)
                try:
                    self._print(line, out)
                finally:
                    printed.set()
        finally:
            self._printing_posted = False
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    @property
    def draws_status(self) -> bool:
        """True when a status row can be kept above the prompt (GNU readline's redraw)."""
        return self.interactive and self._redraw is not None and self._clear_line is not None

    def status(self, text: str) -> None:
        """Show `text` in a row of its own above the prompt, redrawn in place ('' removes
        the row); only where draws_status."""
        if self.draws_status:
            self.show(StatusText(text))

    def _print(self, line: Line, out: TextIO) -> None:
        if isinstance(line, Later):  # made here, by the printer (or the main) thread
            line = line.make()
        if line is BELL:
            with self._lock:
                write(self.stdout, "\a")
            return
        with self._lock:
            if isinstance(line, StatusText):
                self._status = str(line)
                if self._prompt is not None:
                    self._clear_prompt_rows()
                    self._redraw_prompt()
                return
            if self.interactive and not isinstance(line, Whole):
                line = wrap_for_terminal(line, terminal_width(self.stdout))
            if self._prompt is None or not self.interactive:
                write(out, line + "\n")
                return
            self._clear_prompt_rows()
            write(out, line + "\n")
            self._redraw_prompt()

    def _clear_prompt_rows(self) -> None:
        """Wipe the prompt (every row of a long input line) and the status row above it."""
        if self._clear_line is not None:
            self._clear_line()
        else:
            write(self.stdout, "\r\x1b[2K")
        if self._status_shown:
            write(self.stdout, "\x1b[1A\r\x1b[2K")
            self._status_shown = False

    def _redraw_prompt(self) -> None:
        """The status row, if any, then the prompt and what was typed, as they were."""
        assert self._prompt is not None
        if self._status:
            width = terminal_width(self.stdout)
            write(self.stdout, fit_row(self._status, width) + "\n")
            self._status_shown = True
        if self._redraw is not None:
            self._redraw()
        else:
            write(self.stdout, self._prompt + self._line_buffer())

    def _drop_status_row(self, prompt: str, line: str) -> None:
        """After Enter: delete the status row above the line just typed (it is redrawn
        above the next prompt), so no stale progress stays in the scrollback."""
        if not self._status_shown:
            return
        self._status_shown = False
        width = terminal_width(self.stdout)
        rows = sum(screen_rows(part, width) for part in (prompt + line).split("\n"))
        write(self.stdout, f"\x1b[{rows + 1}A\x1b[M\x1b[{rows}B\r")

    def error(self, line: str) -> None:
        """Print a line on stderr."""
        self.show(line, self.stderr)

    def ask(self, prompt: str) -> str:
        """Read one line; EOFError and KeyboardInterrupt pass through.

        Off a terminal the prompt is written as a line of its own before
        reading, so output stays plain lines that scripts can match.
        """
        with self._lock:
            self._prompt = prompt
            if prompt and not self.interactive:
                write(self.stdout, prompt + "\n")
        line: str | None = None
        try:
            line = input(prompt if self.interactive else "")
            return line
        finally:
            with self._lock:
                self._prompt = None
                if self.interactive and line is not None:  # Enter: the rows moved up one
                    self._drop_status_row(prompt, line)
                elif self.interactive and self._status_shown:  # left at the prompt
                    self._clear_prompt_rows()

    def watch_input(self, done: threading.Event) -> str | None:
        """Wait a moment for `done` while nobody is connected yet; what was typed meanwhile
        (it has nobody to go to: the caller refuses it, or runs it if it is a command).

        End of input raises EOFError (the program ends quietly).
        """
        try:
            fd = self.stdin.fileno()
            readable, _, _ = select.select([fd], [], [], 0.1)
        except (OSError, ValueError):  # no pollable stdin (closed, or Windows)
            done.wait(0.5)
            return None
        if not readable or done.is_set():  # once connected, input() reads it
            return None
        typed = os.read(fd, 4096)
        if not typed:
            raise EOFError
        return typed.decode("utf-8", "replace")

    def clear_prompt(self) -> None:
        """Wipe an abandoned prompt line, every row of it (the chat ended while typing)."""
        if self.interactive:
            with self._lock:
                self._clear_prompt_rows()

    def typed_text(self) -> str:
        """What is typed at the prompt but not yet sent ('' off a terminal)."""
        return self._line_buffer() if self.interactive else ""

    def bell(self) -> None:
        """Ring the terminal bell (only on a terminal: piped output stays plain), after
        the lines queued before it."""
        if self.interactive:
            self.show(BELL)

    def newline(self) -> None:
        """End a line left open by Ctrl-C or Ctrl-D at a terminal prompt."""
        if self.interactive:
            with self._lock:
                write(self.stdout, "\n")


def terminal_width(stream: TextIO) -> int:
    """Usable columns: one less than the terminal's, so no row ends at the last column."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 80
    return max(columns - 1, 1)


def main_thread_can_be_signalled() -> bool:
    """True in the main thread where other threads can signal it (POSIX)."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill")


def signal_until(thread: int, signum: signal.Signals, done: threading.Event) -> None:
    """Signal a thread until `done` is set.

    A signal landing just before a blocking read starts (input(), or
    readline's wait for a key) is only handled when the read ends, so it is
    repeated until the handler has run.
    """
    while True:
        try:
            signal.pthread_kill(thread, signum)
        except OSError:  # the thread is gone: the program is ending
            return
        if done.wait(0.01):
            return


def write(stream: TextIO, text: str) -> None:
    """Write and flush; a reader that went away (closed pipe) silences the stream."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def ensure_std_streams() -> None:
    """Stand /dev/null in for a closed stdin, stdout or stderr (e.g. `>&-`)."""
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
