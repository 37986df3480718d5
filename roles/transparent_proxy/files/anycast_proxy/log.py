"""Log lines on stderr; journald adds time and unit (and reads the priority prefixes)."""
import os
import sys


class Log:
    """One line per event on stderr; journald adds time and unit."""

    _PRIO = {"debug": 7, "info": 6, "warning": 4, "error": 3}
    _ORDER = ("debug", "info", "warning", "error")

    def __init__(self, level="info", tag=""):
        self.level = self._ORDER.index(level)
        self.tag = tag
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        self.stream = sys.stderr

    def _write(self, level, text):
        if self._ORDER.index(level) < self.level:
            return
        if self.journal:
            line = f"<{self._PRIO[level]}>{self.tag}{text}\n"
        else:
            line = f"{level}: {self.tag}{text}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def event(self, text):
        self._write("info", text)

    def info(self, text):
        self._write("info", text)

    def warning(self, text):
        self._write("warning", text)

    def error(self, text):
        self._write("error", text)

    def set_level(self, level):
        self.level = self._ORDER.index(level)
