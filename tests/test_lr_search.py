"""The learning rate chosen on the validation split by successive halving (method.lr_search)."""

import json

import pytest
import torch

import calibration_lightning.lr_search as lr_search
from calibration_lightning.recipe import run
from calibration_lightning.schema import LRSearchConf
from calibration_lightning.selection import paired_se
from tests.conftest import TINY_SPLIT


def test_successive_halving_schedule():
    # n candidates at r steps, then ceil(n / eta) at eta * r, until one is left (hand-computed)
    assert LRSearchConf(lrs=[1, 2, 3, 4, 5], probe_steps=2, eta=2, z=1).rungs() == [(5, 2), (3, 4), (2, 8)]
    assert LRSearchConf(lrs=[1e-4, 3e-4, 1e-3], probe_steps=10, eta=3, z=1).rungs() == [(3, 10)]
    assert LRSearchConf(lrs=[1e-4], probe_steps=10, eta=3, z=1).rungs() == []


def test_a_candidate_that_leads_early_can_lose_on_the_longer_rung():
    scores = {
        (1e-4, 5): 1.3, (3e-4, 5): 1.1, (1e-3, 5): 1.0, (3e-3, 5): 1.5,  # rung 1: keep 1e-3 and 3e-4
        (1e-3, 10): 1.2, (3e-4, 10): 0.9,  # rung 2: 3e-4 wins
    }  # fmt: skip
    calls = []

    def probe(lr, steps):  # the validation monitor each (rate, steps) would reach, in the order it is asked
        calls.append((lr, steps))
        return scores[(lr, steps)], None

    search = LRSearchConf(lrs=[1e-4, 3e-4, 1e-3, 3e-3], probe_steps=5, eta=2, z=1.0)
    result = lr_search.search_learning_rate(search, 1e-2, probe, "val/nll", "min")
    assert result["chosen"] == 3e-4 and result["reference"] is None  # 1e-2 is not in the grid
    assert calls == [(1e-4, 5), (3e-4, 5), (1e-3, 5), (3e-3, 5), (1e-3, 10), (3e-4, 10)]
    assert result["probe_steps_total"] == 4 * 5 + 2 * 10
    assert result["rungs"][1] == {"steps": 10, "scores": [[1e-3, 1.2], [3e-4, 0.9]]}
    # a monitor where higher is better ranks the other way (one rung: eta = 4 keeps one of four)
    search.eta = 4
    result = lr_search.search_learning_rate(search, 1e-2, probe, "val/accuracy", "max")
    assert result["chosen"] == 3e-3


def test_the_reference_rate_stays_unless_clearly_beaten():
    # per-question NLL of 4 questions; differences to the reference (5e-4): 1.5e-4 -> [-0.1, 0.1, -0.1, -0.3]
    # (mean -0.1, sample sd 0.1633, SE 0.0816); 1.5e-3 -> [-0.4, -0.6, -0.5, -0.5] (mean -0.5, SE 0.0408)
    ref = torch.tensor([1.0, 1.2, 0.8, 1.0])
    scores = {
        1.5e-4: (0.9, ref + torch.tensor([-0.1, 0.1, -0.1, -0.3])),
        5e-4: (1.0, ref),
        1.5e-3: (0.5, ref + torch.tensor([-0.4, -0.6, -0.5, -0.5])),
    }
    assert paired_se(scores[1.5e-4][1], ref) == pytest.approx(0.1633 / 2, abs=1e-4)
    # z = 1: 1.5e-3 beats the reference by 0.5 > 0.041, 1.5e-4 by 0.1 > 0.082: plain order
    assert lr_search.rank(scores, 5e-4, 1.0, 1.0) == [1.5e-3, 1.5e-4, 5e-4]
    # z = 2: 0.1 < 2 x 0.082, so 1.5e-4 now ranks below the reference
    assert lr_search.rank(scores, 5e-4, 1.0, 2.0) == [1.5e-3, 5e-4, 1.5e-4]
    # z = 20: nothing is clearly better than the reference
    assert lr_search.rank(scores, 5e-4, 1.0, 20.0)[0] == 5e-4
    # without a reference in the grid: best mean first
    assert lr_search.rank(scores, None, 1.0, 20.0) == [1.5e-3, 1.5e-4, 5e-4]


@pytest.mark.slow
def test_run_trains_with_the_learning_rate_that_won_on_validation(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "method.epochs=2",
        "+experiment=lr_search",
        "method.lr_search.lrs=[1e-6,5e-2]",
        "method.lr_search.probe_steps=3",
        "method.lr_search.z=0",  # plain successive halving: the better mean wins
        "bootstrap.resamples=0",
        *TINY_SPLIT,
    )
    run(cfg)
    out = tmp_path / "run"
    training = json.loads((out / "metrics.json").read_text())["training"]
    search = training["lr_search"]
    (rung,) = search["rungs"]
    assert rung["steps"] == 3 and [lr for lr, _ in rung["scores"]] == [1e-6, 5e-2]
    best_lr = min(rung["scores"], key=lambda pair: pair[1])[0]
    assert training["lr"] == search["chosen"] == best_lr
    # a probe starts from the initial adapters and scores validation as the run does: 3 steps at 1e-6 leave the
    # validation NLL where the evaluation before training measured it
    assert rung["scores"][0][1] == pytest.approx(training["monitor_before"], abs=1e-3)
    assert rung["scores"][1][1] != pytest.approx(training["monitor_before"], abs=1e-3)
    assert json.loads((out / "lr_search.json").read_text()) == search  # kept for a resumed run
