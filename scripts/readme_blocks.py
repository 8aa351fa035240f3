"""The one parser of README.md's runnable examples, shared by tests/test_readme.py (which runs them
shortened), scripts/readme_numbers.py (which runs them in full and records what they measure) and
tests/test_readme_claims.py (which checks the numbers their comments quote).

A fenced block opened with ```` ```bash test ```` holds commands, one per line (a trailing `\\`
continues a line). After `#`, a comment says what the command shows; `[shows: TEXT]` and
`[exit: N]` are checkable claims, and any other number in it is a measured quote (QUOTED_NUMBER).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

# A quoted number stands alone: not part of a name (fp8, layers.1.mlp, run_dir=runs/x2).
QUOTED_NUMBER = re.compile(r"(?<![\w./=@-])\d+(?:\.\d+)?(?![\w./-]|\.\d)")
CLAIM = re.compile(r"\[(?:shows|exit): [^\]]*\]")


class Command:
    def __init__(self, text: str, comment: str):
        self.text, self.comment = text, comment
        self.args = shlex.split(text)
        m = re.search(r"\[exit: (\d+)\]", comment)
        self.exit = int(m.group(1)) if m else 0
        self.shows = re.findall(r"\[shows: ([^\]]+)\]", comment)

    def quoted_numbers(self) -> list[str]:
        """The numbers the comment quotes as measurements, in order (claims in brackets excluded)."""
        return QUOTED_NUMBER.findall(CLAIM.sub(" ", self.comment))


def split_comment(line: str) -> tuple[str, str]:
    """`cmd args  # comment` -> (cmd args, comment); a `#` inside quotes is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2).splitlines())
            for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)]


def commands(lines: list[str]) -> list[Command]:
    out, pending = [], ""
    for line in lines:
        code, comment = split_comment(line)
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        code, pending = pending + code, ""
        if code:
            out.append(Command(code, comment))
        elif comment and out:  # a comment line under a command continues its comment
            out[-1].comment += " " + comment
    return out


def readme_blocks(text: str | None = None) -> list[list[Command]]:
    text = README.read_text() if text is None else text
    return [commands(lines) for info, lines in fenced_blocks(text) if info == "bash test"]
