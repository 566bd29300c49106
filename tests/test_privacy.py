"""Differential privacy on uploads: a party's clipping and noise, and the server's accounting."""

import dataclasses

import dp_accounting
import numpy as np
import pytest

from fedbpt import privacy
from fedbpt.errors import UserError
from fedbpt.protocol import GlobalState, Scores, Update
from fedbpt.spec import from_dict

DIM = 50


def private_spec(**privacy_settings):
    return from_dict({"prompt": {"dim": DIM}, "federation": {"rounds": 4}, "privacy": {"clip": 1.0} | privacy_settings})


def honest_update(move_norm: float) -> tuple[GlobalState, Update]:
    state = GlobalState(1, np.full(DIM, 0.1), 0.15, "preamble")
    direction = np.ones(DIM) / np.sqrt(DIM)
    update = Update("p", 1, 7.5, state.mean + move_norm * direction, (0.3, 0.2), 0.25, 0.4, 16)
    return state, update


def test_a_party_clips_its_move_and_losses_and_sends_no_step_of_its_own():
    spec = private_spec(noise=1e-9, loss_clip=2.0)
    state, update = honest_update(move_norm=30.0)
    sent = privacy.privatized(spec, state, update)
    assert np.linalg.norm(sent.mean - state.mean) == pytest.approx(1.0, abs=1e-3)  # float16 on the wire
    assert sent.loss == pytest.approx(2.0) and sent.fitness == pytest.approx(0.4)  # 7.5 clipped to loss_clip
    assert sent.sigmas == (0.15, 0.15) and sent.sigma == 0.15  # the broadcast step, not the party's
    scores = privacy.privatized(spec, state, Scores("p", 0, (0.5, 9.0), 16))
    assert scores.losses == pytest.approx((0.5, 2.0))


def test_the_noise_is_fresh_and_of_the_stated_size():
    spec = private_spec(noise=0.5)
    state, update = honest_update(move_norm=0.0)
    moves = np.stack([privacy.privatized(spec, state, update).mean - state.mean for _ in range(40)])
    assert not np.allclose(moves[0], moves[1])  # not derived from the job's seed, which the server knows
    assert moves.std() == pytest.approx(0.5, rel=0.1)  # noise * clip


def test_epsilon_is_the_rdp_accountants_over_the_jobs_releases():
    spec = private_spec(noise=2.0, delta=1e-6)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(2.0), count=2 + 3 * 4 + 1)  # 2 starts, 4 search rounds, final
    assert privacy.epsilon(spec, privacy.releases(spec, privacy.job_kinds(spec))) == pytest.approx(
        accountant.get_epsilon(1e-6)
    )
    spent = [privacy.epsilon_after_round(spec, number) for number in range(6)]
    assert spent == sorted(spent) and spent[0] > 0
    assert spent[-1] == pytest.approx(accountant.get_epsilon(1e-6))


def test_a_job_over_its_budget_is_refused_naming_the_rounds_it_can_afford():
    spec = private_spec(noise=2.0)
    total = privacy.epsilon(spec, privacy.releases(spec, privacy.job_kinds(spec)))
    privacy.check_budget(dataclasses.replace(spec, privacy=dataclasses.replace(spec.privacy, epsilon=total)))
    tight = dataclasses.replace(spec, privacy=dataclasses.replace(spec.privacy, epsilon=total * 0.6))
    with pytest.raises(
        UserError, match=r"4 search rounds spend epsilon .* over its budget .*: use at most [0-3] rounds"
    ):
        privacy.check_budget(tight)


def test_under_cross_each_rank_round_releases_one_loss_per_mean_a_party_scores():
    spec = from_dict(
        {"federation": {"rounds": 2, "parties": 6, "robust": "cross"}, "privacy": {"clip": 1.0, "noise": 2.0}}
    )
    assert privacy.job_kinds(spec) == ["start", "search", "rank", "search", "rank", "final"]
    assert privacy.releases(spec, privacy.job_kinds(spec)) == 2 + 2 * (3 + 6) + 1
