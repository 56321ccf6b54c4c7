"""Shared fixtures: the answer key, executed once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = ROOT / "notebooks"  # 00_introduction.py, 01_cnn.py, ... one source per section
# CI lays ../shared beside the clone; a user's clone may not have it
QUESTIONS_MD = ROOT.parent / "shared" / "questions.md"
QUESTIONS_GNN_MD = ROOT.parent / "shared" / "questions-gnn.md"
# the section re-executed by the determinism test with another number of jobs: small, and
# with plots and checks
DETERMINISM_SECTION = "dropout"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def executed_report(tmp_path_factory):
    """The answer key executed once, through the same code path as ``dlsummary report``
    (all sections, one kernel per core)."""
    from dlsummary.report import render_report

    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    report = render_report(KEY, out, progress=lines.append)
    return report, lines
