"""Run the shell blocks of a Markdown guide (README.md, docs/*.md) as written.

Every ```sh block is run, in order, in one bash (the blocks share variables), each
command followed by its exit status, so a test can check each command's output. A block
that cannot run in a test (it starts a long-lived process in the foreground, or installs
packages) carries `<!-- not run by the tests: why -->` on the line before its fence;
tests assert which blocks those are, so none is left out silently."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARK = "@@doc-step"
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->\s*$")


@dataclass
class Block:
    lang: str
    text: str
    line: int  # where the fence opens, 1-based
    not_run: str = ""  # why, when the block carries the marker


@dataclass
class Step:
    """One command (with its continuation lines or here-documents), then its combined
    stdout and stderr and exit status once run."""

    command: str
    block: int  # index of its block among the file's blocks
    output: str = ""
    rc: int | None = None

    def json(self) -> list:
        """Every JSON document in the output, in order."""
        decoder, text, found, at = json.JSONDecoder(), self.output, [], 0
        while (at := _skip_space(text, at)) < len(text):
            value, at = decoder.raw_decode(text, at)
            found.append(value)
        return found


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the file, with its language (the fence's info string)."""
    found, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = NOT_RUN.match(lines[i - 1]) if i else None
        found.append(Block(opening.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1,
                           marker.group(1) if marker else ""))
        i = end + 1
    return found


def _complete(text: str) -> bool:
    """Whether bash can parse `text` as whole commands (no open quote, $( or if)."""
    return subprocess.run(["bash", "-n"], input=text, text=True,
                          capture_output=True).returncode == 0


def commands(block: str) -> list[str]:
    """The commands of a shell block, comments and blank lines between them left out."""
    found, lines, heredocs = [], [], []
    for line in block.splitlines():
        if not lines and (not line.strip() or line.lstrip().startswith("#")):
            continue
        lines.append(line)
        if heredocs:
            if line == heredocs[0]:
                heredocs.pop(0)
            if heredocs:
                continue
        else:
            heredocs += re.findall(r"<<-?'?(\w+)'?", line)
            if heredocs:
                continue
        if line.endswith("\\") or not _complete("\n".join(lines) + "\n"):
            continue
        found.append("\n".join(lines))
        lines = []
    assert not lines, f"unfinished command at the end of the block: {lines}"
    return found


def shell_steps(path: Path, expect_not_run: dict[int, str]) -> list[Step]:
    """The commands of every ```sh block of `path`. `expect_not_run` maps the index (among
    the sh blocks) of each block marked not run to a word of its reason; any other
    marked block, or a missing one, fails."""
    sh = [b for b in blocks(path) if b.lang == "sh"]
    marked = {i: b.not_run for i, b in enumerate(sh) if b.not_run}
    assert set(marked) == set(expect_not_run), (path, marked)
    for i, word in expect_not_run.items():
        assert word in marked[i], (path, i, marked[i])
    return [Step(c, i) for i, b in enumerate(sh) if not b.not_run for c in commands(b.text)]


def run(steps: list[Step], *, cwd: Path, env: dict[str, str], timeout: float = 600,
        substitutions: dict[str, str] | None = None) -> None:
    """All steps in one bash, each followed by its exit status; fills in output and rc."""
    script = []
    for i, step in enumerate(steps):
        command = step.command
        for old, new in (substitutions or {}).items():
            command = command.replace(old, new)
        script += [f"echo '{MARK} {i}'", command, f'echo "{MARK} rc $?"']
    # Its own process group: whatever a block leaves running in the background (a
    # broker, a worker) goes with it, also when the test times out.
    script.insert(0, "trap 'kill $(jobs -p) 2>/dev/null' EXIT")
    bash = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=cwd, text=True, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = bash.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bash.pid, signal.SIGKILL)
        bash.wait()
    assert bash.returncode == 0, out
    parts = re.split(rf"^{MARK} (\d+)\n", out, flags=re.M)
    assert len(parts) == 2 * len(steps) + 1, out
    for index, body in zip(parts[1::2], parts[2::2], strict=True):
        output, rc = re.fullmatch(rf"(.*?){MARK} rc (\d+)\n", body, re.S).groups()
        steps[int(index)].output, steps[int(index)].rc = output, int(rc)


def only(steps: list[Step], needle: str) -> Step:
    """The step whose command is `needle`, or else the one step that contains it."""
    found = [s for s in steps if needle == s.command] or \
        [s for s in steps if needle in s.command]
    assert len(found) == 1, (needle, [s.command for s in found])
    return found[0]


def failures(steps: list[Step]) -> str:
    return "\n\n".join(f"$ {s.command}\n{s.output}(exit {s.rc})" for s in steps if s.rc)
