"""The recommended score per question: a fixed rule (mean of ranks of named signals), never fitted to the run."""

import numpy as np

from curvature_callback.analysis.metrics import ranks
from curvature_callback.analysis.recommend import QUESTIONS, RULES, rank_mean, recommended_scores, used_signals


def test_every_question_has_a_rule_with_its_evidence():
    assert QUESTIONS == ("mislabeled", "memorized", "duplicates")
    for rule in RULES.values():
        assert rule.signals and rule.asks.endswith("?") and len(rule.evidence) > 80
        assert "curvature" not in rule.signals  # our studies: it adds nothing to any question (docs/RESULTS.md)


def test_rank_mean_is_the_mean_of_the_ranks_over_the_signals_each_sample_has():
    a, b = np.array([3.0, 1.0, 2.0, np.nan]), np.array([10.0, 30.0, 20.0, 5.0])
    got = rank_mean({"a": a, "b": b}, ("a", "b"))
    ra = ranks(a[:3])
    rb = ranks(b)
    np.testing.assert_allclose(got[:3], (ra + rb[:3]) / 2)
    assert got[3] == rb[3]  # only b has a value for the last sample
    assert np.isnan(rank_mean({"a": np.full(2, np.nan)}, ("a",))).all()


def test_the_rule_falls_back_to_what_the_run_has():
    n = np.arange(4.0)
    assert used_signals({"train_loss": n, "loss": n, "curvature": n})["mislabeled"] == ("train_loss", "loss")
    assert used_signals({"loss": n, "curvature": n})["mislabeled"] == ("loss",)  # a module without the contract
    assert used_signals({"curvature": n})["mislabeled"] == ("curvature",)
    assert used_signals({"train_loss": n, "loss": np.full(4, np.nan)})["mislabeled"] == ("train_loss",)  # no pass
    assert recommended_scores({}) == {}


def test_the_recommended_score_does_not_read_ground_truth():
    rng = np.random.default_rng(0)
    s = {"train_loss": rng.random(50), "loss": rng.random(50), "flipped": rng.random(50) > 0.5}
    without = recommended_scores({k: v for k, v in s.items() if k != "flipped"})
    np.testing.assert_array_equal(recommended_scores(s)["mislabeled"], without["mislabeled"])
