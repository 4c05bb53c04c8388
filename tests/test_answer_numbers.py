"""The numbers an answer states: parsed in order, log1p-squashed, masked where an answer has fewer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qanchor.answer_numbers import answer_numbers
from qanchor.losses import answer_number_loss


def test_numbers_are_read_in_order_and_missing_slots_are_masked():
    values, present = answer_numbers(["37 days ago; 3 refill purchases in the last 90 days, about 28 days apart.",
                                      "No refill purchases in the last 90 days.",
                                      "Nothing recorded."], slots=4)
    np.testing.assert_allclose(values[0], np.log1p([37, 3, 90, 28]), rtol=1e-6)
    assert present.tolist() == [[True] * 4, [True, False, False, False], [False] * 4]
    assert values[2].tolist() == [0.0] * 4


def test_decimals_count_and_words_with_digits_do_not_split_into_numbers():
    """"tier-2" is the number 2; "v1.2" is a name, not two numbers."""
    values, present = answer_numbers(["A 34-year-old teacher in a tier-2 city, app v1.2, spent 7961.50."], slots=4)
    np.testing.assert_allclose(values[0, :3], np.log1p([34, 2, 7961.5]), rtol=1e-6)
    assert present[0].tolist() == [True, True, True, False]


def test_slots_must_be_positive():
    with pytest.raises(ValueError, match="must be positive, got 0"):
        answer_numbers(["3 days"], slots=0)


def test_the_loss_rewards_predictions_that_move_with_the_numbers_whatever_their_scale():
    """The head need not reach the numbers' offset or scale, only vary with them."""
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    present = torch.ones(4, 1, dtype=torch.bool)
    assert answer_number_loss(100 + 0.01 * values, values, present).item() == pytest.approx(0.0, abs=1e-5)
    assert answer_number_loss(-values, values, present).item() == pytest.approx(2.0, abs=1e-5)


def test_numbers_an_answer_does_not_state_are_left_out():
    predicted = torch.tensor([[1.0, 0.0], [2.0, 9.0], [3.0, 0.0], [4.0, 0.0]], requires_grad=True)
    values = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 2.0], [4.0, 3.0]])
    present = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    # Slot 1 without row 1: predictions (0, 0, 0) carry no correlation with (1, 2, 3).
    assert answer_number_loss(predicted, values, present).item() == pytest.approx((0 + 1) / 2, abs=1e-5)
    answer_number_loss(predicted, values, present).backward()
    assert predicted.grad[1, 1] == 0


def test_per_question_centring_ignores_what_the_question_alone_explains():
    """Spend (~8) under one question, counts (~1) under another: a head that only tells the two
    questions apart correlates with the mixed slot, but not with how users differ under each."""
    values = torch.tensor([[8.0], [9.0], [8.5], [1.0], [2.0], [1.5]])
    questions = torch.tensor([0, 0, 0, 1, 1, 1])
    present = torch.ones(6, 1, dtype=torch.bool)
    question_only = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    assert answer_number_loss(question_only, values, present).item() < 0.1
    assert answer_number_loss(question_only, values, present, questions).item() == pytest.approx(1.0, abs=1e-5)
    users = values - torch.tensor([[8.5], [8.5], [8.5], [1.5], [1.5], [1.5]])
    assert answer_number_loss(users, values, present, questions).item() == pytest.approx(0.0, abs=1e-5)


def test_a_batch_without_enough_numbers_gives_zero_loss_that_still_backpropagates():
    predicted = torch.ones(2, 3, requires_grad=True)
    loss = answer_number_loss(predicted, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and predicted.grad is not None
