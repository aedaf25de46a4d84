"""method=auto's rule: lowest validation conf-ECE among candidates near the best validation accuracy."""

import pytest

from calibration_lightning.methods import choose_method


def _m(acc, ece):
    return {"accuracy": acc, "conf_ece": ece, "n": 100}


def test_picks_rcft_when_rcft_is_better_on_validation():
    choice = choose_method({"cft": _m(0.60, 0.12), "rcft": _m(0.61, 0.04)}, 0.02)
    assert choice["chosen"] == "rcft" and choice["eligible"] == ["cft", "rcft"]


def test_picks_cft_when_cft_is_better_on_validation():
    assert choose_method({"cft": _m(0.60, 0.03), "rcft": _m(0.60, 0.09)}, 0.02)["chosen"] == "cft"


def test_a_lower_ece_bought_with_accuracy_is_not_eligible():
    choice = choose_method({"cft": _m(0.62, 0.08), "rcft": _m(0.55, 0.01)}, 0.02)
    assert choice["eligible"] == ["cft"] and choice["chosen"] == "cft"
    assert choose_method({"cft": _m(0.62, 0.08), "rcft": _m(0.55, 0.01)}, 0.10)["chosen"] == "rcft"


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError):
        choose_method({}, 0.02)
