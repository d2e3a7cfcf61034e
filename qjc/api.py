"""Public Python API: compile() and load(). Filled in as frontends and backends land."""

from __future__ import annotations

from dataclasses import dataclass

from qjc.errors import MissingComponentError


@dataclass(frozen=True)
class Options:
    target: str = "cpu"
    dtype: str | None = None


def compile(model, example_inputs=None, target: str = "cpu", **options):  # noqa: A001
    raise MissingComponentError("qjc.compile: no frontend has landed yet")


def load(path):
    raise MissingComponentError("qjc.load: no artifact loader has landed yet")
