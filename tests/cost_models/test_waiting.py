import pytest

from cost_models.waiting import expected_wait_hours, priced_usd


def test_a_wait_is_priced_at_the_value_of_an_hour_of_delay():
    assert priced_usd(10.0, 1800, 2.0) == pytest.approx(11.0)
    assert priced_usd(10.0, 0, 2.0) == 10.0
    assert priced_usd(10.0, 7200, 0.0) == 10.0


def test_capacity_available_now_means_no_wait():
    assert expected_wait_hours(0) == 0
    assert expected_wait_hours(-5) == 0  # a cooldown already over
    assert expected_wait_hours(5400) == pytest.approx(1.5)
