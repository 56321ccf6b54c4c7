"""The student assignment and its variants: no answers in it, and every variant's key derived
and confirmed by measurement."""

from __future__ import annotations

import pytest

from dlsummary.assignment import (
    ORIGINAL,
    build_assignment,
    cnn_receptive_fields,
    draw_variant,
    key_questions,
    pirate_gradient_ratio,
    variant_key,
)
from dlsummary.errors import DLSummaryError


def test_the_assignment_has_every_question_in_order_and_none_of_our_answers():
    _, questions = key_questions()
    nb = build_assignment()
    text = "\n".join(c.source for c in nb.cells)
    positions = [text.index(f"### {q.qid}\n") for q in questions]
    assert positions == sorted(positions)
    answers = [c.source for c in nb.cells if c.source.startswith("**Answer:**")]
    assert len(answers) == len(questions) and all(a.strip() == "**Answer:**" for a in answers)
    for q in questions:  # no sentence of our answers, no evidence code
        first = " ".join(q.answer.split("**Answer:**", 1)[1].split())[:80]
        assert first not in " ".join(text.split()), q.qid
    assert "check(" not in text and "control(" not in text and "· " not in text
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("cnn = nn.Sequential(" in c for c in code)       # cnn.3's network
    assert any("mlpirate = nn.Sequential(" in c for c in code)  # the pirate MLP
    assert any("def foo(W, b):" in c for c in code)             # backprop.3's snippet
    assert any("nn.Embedding(num_embeddings=42" in c for c in code)  # seq.2's snippet


def test_a_variant_changes_the_parameterised_questions_only():
    variant = draw_variant(3)
    original, varied = build_assignment(ORIGINAL), build_assignment(variant)
    changed = [(a.source, b.source) for a, b in zip(original.cells, varied.cells, strict=True)
               if a.source != b.source]
    # the grading notes (naming the variant), cnn.3's network, dropout.1's p1 and p2, and
    # the pirate MLP (losses.3 refers back to it: one copy)
    assert sum("]*24," in c.source for c in original.cells) == 1 and len(changed) == 4
    joined = "\n".join(b for _, b in changed)
    assert f"p1, p2 = {variant.p1}, {variant.p2}" in joined
    assert f"]*{variant.pirate_depth}," in joined
    assert varied.metadata["dlsummary"]["variant"] == 3


def test_the_same_seed_gives_the_same_variant_on_any_machine():
    # Python's own generator seeded with a string: the same on every platform and version
    assert draw_variant(3) == draw_variant(3) and draw_variant(3) != draw_variant(4)
    assert (draw_variant(1).p1, draw_variant(1).p2, draw_variant(1).pirate_depth) == (0.25, 0.2, 35)
    assert draw_variant(None) is ORIGINAL


@pytest.mark.slow
def test_200_variants_analytic_receptive_field_equals_the_measured_footprint():
    sizes = set()
    for number in range(200):
        analytic, measured = cnn_receptive_fields(draw_variant(number))
        assert analytic == measured, f"variant {number}: {analytic} vs footprint {measured}"
        sizes.add(analytic)
    assert len(sizes) > 30  # the family really varies the answer


def test_the_variant_key_is_derived_and_confirmed_by_measurement():
    key = variant_key(draw_variant(3))
    assert key.receptive_field == key.measured_receptive_field
    q = 1 - (1 - key.variant.p1) * (1 - key.variant.p2)
    assert key.drop_probability == pytest.approx(q)
    se = (q * (1 - q) / 400_000) ** 0.5
    assert abs(key.measured_drop_probability - q) < 5 * se
    # control: the tempting wrong answer p1 + p2 is told apart by the same measurement
    assert abs(key.measured_drop_probability - (key.variant.p1 + key.variant.p2)) > 20 * se
    assert key.pirate_gradient_ratio < 1e-3  # losses.2: vanishing, at this variant's depth
    # each repeated Linear+Sigmoid layer divides it by about 7 (sigmoid' <= 1/4, small weights)
    assert pirate_gradient_ratio(2) < 0.2 * pirate_gradient_ratio(1)
    original = variant_key(ORIGINAL)
    assert (original.receptive_field, original.drop_probability) == (112, pytest.approx(0.28))


def test_bad_variants_are_refused():
    with pytest.raises(DLSummaryError, match="non-negative"):
        draw_variant(-1)
