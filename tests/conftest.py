"""Shared fixtures: the answer key, executed once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "summary_questions.py"
# CI lays ../shared beside the clone; a user's clone may not have it
QUESTIONS_MD = ROOT.parent / "shared" / "questions.md"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def executed_report(tmp_path_factory):
    """The answer key executed through the same code path as ``dlsummary report``."""
    from dlsummary.report import render_report

    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    report = render_report(NOTEBOOK, out, progress=lines.append)
    return report, lines
