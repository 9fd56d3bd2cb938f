"""The quality gate's decision rule, on the team's sets and on the held-out domains."""

from __future__ import annotations

from evaluation.gate import decide_quality, heldout_as_quality


def _result(copy: dict[str, float], maps: dict[str, float]) -> dict:
    return {"copy": {e: {"p@1": p} for e, p in copy.items()}, "category": {s: {"map@10": m} for s, m in maps.items()}}


def test_a_candidate_no_worse_anywhere_is_promoted() -> None:
    current = _result({"crop-50": 0.95, "jpeg-q20": 0.90}, {"tuxpaint": 0.39})
    promote, reason = decide_quality(current, _result({"crop-50": 0.96, "jpeg-q20": 0.90}, {"tuxpaint": 0.388}))
    assert promote and reason.startswith("promote")


def test_one_edit_losing_more_than_002_refuses_even_when_the_mean_improves() -> None:
    current = _result({"crop-50": 0.95, "jpeg-q20": 0.90}, {"tuxpaint": 0.39})
    promote, reason = decide_quality(current, _result({"crop-50": 0.99, "jpeg-q20": 0.87}, {"tuxpaint": 0.39}))
    assert not promote and "jpeg-q20" in reason


def test_a_drop_of_exactly_002_is_not_more_than_002() -> None:
    current = _result({"crop-50": 0.9733, "flip": 0.9}, {"clip": 0.24})
    assert decide_quality(current, _result({"crop-50": 0.9533, "flip": 0.92}, {"clip": 0.24}))[0]
    assert not decide_quality(current, _result({"crop-50": 0.9532, "flip": 0.92}, {"clip": 0.24}))[0]


def test_held_out_domains_count_each_domain_edit_and_category_on_its_own() -> None:
    def version(grey: float, served_map: float) -> dict:
        return {"copy": {"grayscale": {"p@1": grey}},
                "category": {"none": {"map@10": served_map}, "qe n=3": {"map@10": 0.9}}}

    results = {"openclipart": [version(0.92, 0.24), version(0.93, 0.24)],
               "emojione": [version(0.97, 0.25), version(0.94, 0.25)]}
    current, candidate = heldout_as_quality(results, 0), heldout_as_quality(results, 1)
    assert set(candidate["copy"]) == {"openclipart grayscale", "emojione grayscale"}
    assert candidate["category"]["openclipart"]["map@10"] == 0.24  # no re-ranking: what Search serves
    promote, reason = decide_quality(current, candidate)
    assert not promote and "emojione grayscale" in reason  # a loss on one domain is not averaged away
