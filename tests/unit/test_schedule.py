import itertools

import pytest

from thawline.training.schedule import warmup_cosine


def test_warmup_then_cosine_to_zero():
    values = [warmup_cosine(s, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] < 0.001


@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_tiny_runs_are_defined(total):
    values = [warmup_cosine(s, total) for s in range(total)]
    assert all(0 <= v <= 1 for v in values)
