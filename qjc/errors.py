"""User-facing errors. Each names the file, node or op at fault and says what to do.

The CLI maps them to exit codes: QJCError -> 1 (bad input, unsupported model), usage -> 2,
anything else (a bug in qjc) -> 3.
"""

from __future__ import annotations


class QJCError(Exception):
    """Base of every error qjc raises on purpose. ``hint`` says what the user can do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class IRError(QJCError):
    """A graph is malformed: wrong types, dangling values, bad attributes."""


class IRParseError(IRError):
    """IR text that does not parse; the message names the line."""

    def __init__(self, message: str, line_no: int | None = None, line: str | None = None,
                 source: str | None = None) -> None:
        where = source or "<ir text>"
        if line_no is not None:
            where += f":{line_no}"
        text = f"{where}: {message}"
        if line is not None:
            text += f"\n    {line.strip()}"
        super().__init__(text)
        self.line_no = line_no


class VerifyError(IRError):
    """The verifier found problems; all of them are listed."""

    def __init__(self, graph_name: str, problems: list[str]) -> None:
        shown = "\n  - ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"graph {graph_name} failed verification:\n  - {shown}{more}")
        self.problems = problems


class UnknownOpError(IRError):
    def __init__(self, op: str, where: str = "") -> None:
        from difflib import get_close_matches

        from qjc.ir.ops.registry import REGISTRY

        near = get_close_matches(op, list(REGISTRY), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "`qjc ops` lists the known ops"
        super().__init__(f"{where + ': ' if where else ''}unknown op {op!r}", hint)
        self.op = op


class UnsupportedOpsError(QJCError):
    """A model uses ops a frontend or backend cannot take: all of them, with counts and places."""

    def __init__(self, source: str, ops: dict[str, list[str]]) -> None:
        lines = []
        for op, places in sorted(ops.items()):
            shown = "; ".join(places[:3]) + (" ..." if len(places) > 3 else "")
            lines.append(f"  {op} x{len(places)}" + (f" at {shown}" if shown else ""))
        super().__init__(
            f"{source}: {len(ops)} unsupported op kind(s):\n" + "\n".join(lines),
            "`qjc explain MODEL` shows the full coverage report",
        )
        self.ops = ops


class MissingComponentError(QJCError):
    """A part of qjc (or an optional dependency) that this call needs is not available."""


class BackendError(QJCError):
    """A backend could not be loaded, or failed while lowering or loading an artifact."""


class ArtifactError(QJCError):
    """An artifact is missing files, fails its integrity check, or was built for something else."""


class InternalError(QJCError):
    """A bug in qjc. Exit code 3."""

    exit_code = 3
