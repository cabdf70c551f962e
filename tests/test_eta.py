"""Progress lines' time left (core.progress, one formula for the merge, demo build, Sweep and weights)
and the weights-from-data result's hint when τ made the weights near-uniform."""
import math

import pytest

from core.cocktail.weights import DataWeights
from core.demo.build import DemoProgress
from core.merge.engine import Progress
from core.progress import eta, eta_text
from ui.demo_panel import progress_markdown
from ui.merge.recipe_form import ModelRow
from ui.merge.weights_panel import weights_markdown


@pytest.mark.parametrize("done, total, elapsed, left", [(12, 36, 30.0, 60.0), (1, 4, 10.0, 30.0),
                                                         (36, 36, 90.0, 0.0), (0, 36, 5.0, math.inf),
                                                         (3, 36, 0.0, math.inf)])
def test_eta_is_the_rest_at_the_average_rate_so_far(done, total, elapsed, left):
    assert eta(done, total, elapsed) == left


def test_eta_text_words_seconds_then_minutes():
    assert [eta_text(s) for s in (0.4, 119.0, 121.0, 3600.0, math.inf)] == [
        "0 s left", "119 s left", "2 min left", "60 min left", "— left"]


def test_the_merge_and_the_demo_build_take_their_eta_from_the_helper():
    merge = Progress(3, 10, "w", bytes_done=250, bytes_total=1000, elapsed=5.0, device="cpu")
    assert merge.eta == eta(250, 1000, 5.0) == 15.0
    event = DemoProgress("cooking-ce", 2, 5, step=6, total=12, loss=0.5, elapsed=40.0, state="training",
                         done=30, planned=90)
    assert event.eta == 80.0 and progress_markdown(event).endswith("· 80 s left")
    assert progress_markdown(DemoProgress("general-ce", 1, 5, 0, 0, None, 0.5, "training")).endswith("· — left")


def result(weights, tau=5.0):
    models = [f"m{i}" for i in range(len(weights))]
    return DataWeights(models, "reranker", [0.5] * len(weights), weights, tau), [ModelRow(m) for m in models]


def test_near_uniform_weights_say_so_and_suggest_a_lower_tau():
    text = weights_markdown(*result([0.49, 0.51]))
    assert "near-uniform" in text and "lower τ (e.g. 0.5)" in text
    assert "near-uniform" not in weights_markdown(*result([0.3, 0.7]))
    assert "near-uniform" not in weights_markdown(*result([1.0]))  # one model: nothing to spread
