"""The command line's one progress display: a tqdm bar on a terminal, plain lines in logs and pipes.

Only the command-line tools import this module (``import numbarnn`` does not), and it imports tqdm only when it draws
a bar.
"""

import sys


class Progress:
    """Progress through ``total`` units (updates, processes) with a status text that says what is happening now.

    On a terminal (``mode="auto"``) or with ``mode="bar"``, a tqdm bar on ``file``, the status after it; otherwise
    (``mode="lines"``, or a file that is not a terminal) a line ``"<unit> <done>/<total>  <status>"`` for the first
    and last unit and every ``every``-th, so that a log stays short. ``leave=False`` clears the bar when closed.
    """

    def __init__(self, total, unit, *, file=None, mode="auto", every=1, leave=True):
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"mode must be 'auto', 'bar' or 'lines', got {mode!r}")
        self.total, self.unit, self.every = total, unit, max(1, every)
        self.done = 0
        self.file = sys.stdout if file is None else file
        self.bar = None
        if mode == "bar" or (mode == "auto" and self.file.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=self.file, dynamic_ncols=True, leave=leave)

    def update(self, done, status):
        """``done`` of the ``total`` units are done (or under way, as the caller counts); ``status`` is the news."""
        self.done = done
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=False)
            if done != self.bar.n:
                self.bar.update(done - self.bar.n)  # tqdm redraws at most every 0.1 s: cheap to call every update
            else:
                self.bar.refresh()
        elif done % self.every == 0 or done in (1, self.total):
            print(f"{self.unit} {done:>{len(str(self.total))}}/{self.total}  {status}", file=self.file, flush=True)

    def set_status(self, status):
        """A new status, the count unchanged."""
        self.update(self.done, status)

    def write(self, text):
        """Print ``text`` on its own lines (above the bar, which is then drawn again)."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
