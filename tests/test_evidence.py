"""Checks as objects: pass, fail with all three parts in the message, and refuse misuse."""

from __future__ import annotations

import json

import pytest
import torch

from dlsummary.errors import DLSummaryError
from dlsummary.evidence import CheckFailed, check, control


def test_a_passing_check_records_claim_measured_and_threshold(capsys):
    result = check("losses.4.A", "ReLU nets can have vanishing gradients",
                   torch.tensor(3e-9), "<", 1e-3)
    assert result.passed and result.kind == "check" and result.question == "losses.4"
    assert result.measured == pytest.approx(3e-9) and result.expected == "< 0.001"
    assert "losses.4.A" in capsys.readouterr().out
    json.dumps(result.to_dict())


def test_a_failing_check_raises_with_item_claim_measured_and_expected():
    with pytest.raises(CheckFailed) as info:
        check("losses.4.A", "ReLU nets can have vanishing gradients", 0.5, "<", 1e-3)
    message = str(info.value)
    assert message == ("losses.4.A: ReLU nets can have vanishing gradients: measured 0.5, "
                       "expected < 0.001")
    assert isinstance(info.value, AssertionError) and not info.value.check.passed


@pytest.mark.parametrize(("value", "op", "threshold", "kw", "ok"), [
    (1.0, "<=", 1.0, {}, True), (1.0, "<", 1.0, {}, False), (2, ">=", 2, {}, True),
    (0.5, "between", (0, 1), {}, True), (1.5, "between", (0, 1), {}, False),
    (1.04, "~", 1.0, {"rel": 0.05}, True), (1.06, "~", 1.0, {"rel": 0.05}, False),
    (float("nan"), "~", 1.0, {"tol": 1.0}, False), ("a", "in", ("a", "b"), {}, True),
    ((9, 9), "==", (9, 9), {}, True), (True, "!=", False, {}, True),
    # lists are compared element by element, never lexicographically
    ([3.1, 1.0], "between", (2, 5), {}, False), ([3.1, 4.0], "between", (2, 5), {}, True),
    ([1, 2], "<", 3, {}, True), ([1, 4], "<", 3, {}, False), ([1, 4], "<", [2, 5], {}, True),
    ([1.0, 2.0], "~", [1.0, 2.1], {"tol": 0.2}, True), ([1.0, 2.0], "~", 1.0, {"tol": 0.5}, False),
])
def test_operators(value, op, threshold, kw, ok):
    if ok:
        assert control("cnn.3", "a claim", value, op, threshold, **kw).kind == "control"
    else:
        with pytest.raises(CheckFailed):
            check("cnn.3", "a claim", value, op, threshold, **kw)


@pytest.mark.parametrize(("args", "kw", "words"), [
    (("CNN 3", "claim", 1, "<", 2), {}, "question id"),
    (("cnn.3", "claim", 1, "<<", 2), {}, "unknown operator"),
    (("cnn.3", "claim", 1, "~", 2), {}, "exactly one of"),
    (("cnn.3", "claim", 1, "<", 2), {"tol": 1}, "only go with"),
    (("cnn.3", "claim", "a", "<", 2), {}, "cannot compare"),
    (("cnn.3", "claim", [1, 2], "<", [1, 2, 3]), {}, "3 thresholds"),
    (("cnn.3", "claim", 1, "<", [1, 2]), {}, "single measured value"),
])
def test_misuse_is_a_clear_error(args, kw, words):
    with pytest.raises(DLSummaryError, match=words):
        check(*args, **kw)
