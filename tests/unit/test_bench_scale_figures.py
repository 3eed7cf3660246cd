"""The scale-out benchmark's figures of where a callback's time goes (no run: figures from raw results)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scale_out import random_pollers_receives, scale_figures
from bench.scale_report import scale_receives_table


@pytest.mark.parametrize(
    ("k", "q", "receives"),
    [(1, 99, 1), (2, 50, 1), (2, 99, 7), (4, 50, 3), (4, 90, 9), (4, 99, 17), (8, 99, 35)],
)
def test_receives_a_random_choice_of_poller_takes(k: int, q: float, receives: int) -> None:
    assert random_pollers_receives(k, q) == receives
    # The least such count: one receive fewer reaches the waiter with a chance below q.
    assert receives == 1 or 1 - (1 - 1 / k) ** (receives - 1) < q / 100 <= 1 - (1 - 1 / k) ** receives


def raw_burst(receives: dict[str, int]) -> dict[str, Any]:
    sent = dict.fromkeys(receives, 100.0)
    fired = {arn: 100.5 + 0.25 * count for arn, count in receives.items()}
    return {
        "scenario": {"k": 4, "mode": "burst", "n": len(receives), "time_limit": 240.0},
        "name": "scale-k4-burst",
        "sent": sent,
        "fired": fired,
        "receives": receives,
        "failures": {},
        "maxrss_kb": 1024,
        "sqs_requests": {"ReceiveMessage": 10},
        "messages_left": 0,
        "triggerers_cpu_s": 3.5,
        "emulator_cpu_s": 4.0,
    }


def test_receives_and_the_time_of_a_receive_are_read_from_each_callback() -> None:
    receives = {f"arn-{i}": 1 + i % 10 for i in range(100)}  # 1..10, ten of each
    figures = scale_figures(raw_burst(receives))
    assert (figures["receives_p50"], figures["receives_p90"], figures["receives_p99"]) == (5.0, 9.0, 10.0)
    assert (figures["receives_p50_random"], figures["receives_p99_random"]) == (3, 17)
    assert figures["seconds_per_receive"] == pytest.approx(0.25)
    assert (figures["triggerers_cpu_s"], figures["emulator_cpu_s"]) == (3.5, 4.0)
    table = scale_receives_table([figures])
    assert "| 4 | sent at once | 5 / 9 / 10 | 3 / 9 / 17 | 0.250 | 3.5 / 4.0 |" in table
    # One triggerer: every callback took one receive; nothing to fit.
    one = scale_figures(raw_burst({f"arn-{i}": 1 for i in range(10)}))
    assert one["seconds_per_receive"] is None
    assert one["receives_p99"] == 1.0
