"""The routing policy, every outcome: claim, hold, hand back with backoff, delete as stale or duplicate, leave alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from airflow_sm_callback.protocol import CallbackMatcher, CallbackMessage, ReceivedMessages, UnparsedMessage
from airflow_sm_callback.protocol.message import sqs_metadata
from airflow_sm_callback.protocol.routing import (
    HOT_SECONDS,
    MAX_HOT_RECEIVES,
    Claim,
    Decision,
    Delivery,
    Knowledge,
    PollerEstimate,
    Reason,
    Verdict,
    Want,
    backoff_visibility,
    decide,
    decide_invalid,
    hot_receives,
    sort,
    visibility_changes,
    wants,
)

ARN = "arn:aws:sagemaker:us-east-1:111122223333:pipeline/p/execution/{}"


@dataclass
class Steps:
    """Step knowledge set by hand: ``closed``, ``names`` (token: step name), ``fresh`` tokens."""

    closed: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)
    fresh: set[str] = field(default_factory=set)

    def step_closed(self, token: str) -> bool:
        return token in self.closed

    def step_fresh(self, token: str) -> bool:
        return token in self.fresh or token in self.closed

    def step_known(self, token: str) -> bool:
        return token in self.names or token in self.closed

    def step_name(self, token: str) -> str | None:
        return self.names.get(token)


@dataclass
class HandOffs:
    """Hand-off knowledge set by hand: tokens handed on (with their message ids) and landed."""

    handed: dict[str, set[str]] = field(default_factory=dict)
    landed_tokens: set[str] = field(default_factory=set)
    released_tokens: set[str] = field(default_factory=set)

    def handed_on(self, token: str) -> bool:
        return token in self.handed

    def is_copy(self, token: str, message_id: str | None) -> bool:
        return token in self.handed and message_id is not None and message_id not in self.handed[token]

    def landed(self, token: str) -> bool:
        return token in self.landed_tokens

    def released(self, token: str) -> bool:
        return token in self.released_tokens


def message(
    token: str, execution: str = "a", *, status: str = "Executing", mid: str = "", count: int = 1
) -> dict:
    body = {
        "token": token,
        "pipelineExecutionArn": ARN.format(execution),
        "status": status,
        "arguments": {"n": 1},
    }
    return {
        "MessageId": mid or f"m-{token}-{status}",
        "ReceiptHandle": f"r-{mid or token + status}",
        "Body": json.dumps(body),
        "Attributes": {"ApproximateReceiveCount": str(count)},
    }


def delivery(token: str = "Ab3dE6gH9k", execution: str = "a", count: int = 1) -> Delivery:
    callback = CallbackMessage.from_sqs(message(token, execution, count=count))
    return Delivery(callback, (f"r-{token}",), (f"m-{token}",), count)


def test_backoff_is_at_once_then_grows_to_a_minute() -> None:
    assert [backoff_visibility(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_visibility(10_000) == 60


def test_with_several_pollers_a_message_is_handed_back_at_once_until_it_has_surely_met_them_all() -> None:
    assert [hot_receives(k) for k in (1.0, 2.0, 4.0, 8.0)] == [1, 14, 33, 69]
    # At each of those counts a waiter in one of k pollers has missed it with chance <= 0.01 %.
    for k in (2, 4, 8):
        assert (1 - 1 / k) ** hot_receives(k) <= 0.0001 < (1 - 1 / k) ** (hot_receives(k) - 1)
    assert [backoff_visibility(n, pollers=4.0) for n in (1, 33, 34, 35, 36, 50)] == [0, 0, 1, 2, 4, 60]
    assert hot_receives(1000.0) == 100  # bounded however many pollers seem to be there
    # The first time a poller sees a message it hands it back at once, whatever its count.
    assert backoff_visibility(9, first_here=True) == 0
    assert backoff_visibility(9) == 60


def test_the_poller_estimate_follows_the_receive_counts() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC) + timedelta(seconds=5)  # sent after the estimates below started
    alone = PollerEstimate()
    assert alone.value == 1.0
    # One poller alone: it sees every message first at count 1, and again one receive later.
    for i in range(100):
        alone.observe(f"m{i}", 1, now)
        assert alone.first_here([f"m{i}"])
        alone.handed_back_at_once(f"m{i}")
        alone.observe(f"m{i}", 2, now)
        assert not alone.first_here([f"m{i}"])
    assert alone.value == pytest.approx(1.0)
    # Four pollers taking turns: three others' receives before and between this one's.
    four = PollerEstimate()
    for i in range(100):
        four.observe(f"n{i}", 4, now)
        four.handed_back_at_once(f"n{i}")
        four.observe(f"n{i}", 8, now)
    assert four.value == pytest.approx(4.0, abs=0.01)
    # A first sighting says nothing (in a burst every poller sights most messages first at
    # count 1), nor does a message sent before it started (a restarted triggerer).
    samples = four.samples
    four.observe("fresh", 1, now)
    four.observe("old", 40, datetime(2020, 1, 1, tzinfo=UTC))
    four.observe("old", 44, now)
    assert four.samples == samples
    first = Delivery(delivery(count=20).callback, ("r",), ("new",), 20)
    four.observe("new", 20, now)
    assert decide(first, None, Knowledge(Steps(), pollers=four)).seconds == 0  # first sighting here
    for count in range(21, 200):  # then received here every time: this poller alone has it
        four.observe("new", count, now)
    assert (
        decide(
            Delivery(first.callback, ("r",), ("new",), 199), None, Knowledge(Steps(), pollers=four)
        ).seconds
        == 60
    )


def test_a_message_others_received_too_is_handed_back_at_once_before_the_estimate_has_samples() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC) + timedelta(seconds=5)  # sent after the estimates below started
    callback = delivery(count=1).callback

    def seconds(estimate: PollerEstimate, message_id: str, count: int) -> int:
        return decide(
            Delivery(callback, ("r",), (message_id,), count), None, Knowledge(Steps(), pollers=estimate)
        ).seconds

    # A new estimate (1 poller): a message received here twice in a row goes on the ladder...
    cold = PollerEstimate()
    cold.observe("a", 1, now)
    assert seconds(cold, "a", 1) == 0
    cold.observe("a", 2, now)
    assert seconds(cold, "a", 2) == 1
    # ... but one received elsewhere in between (count 3 at its second receive here) says
    # another poller is there: from then on at least two are assumed, for every message (a
    # poller is often the next to receive what it handed back, which keeps its estimate low).
    other = PollerEstimate()
    other.observe("b", 1, now)
    assert not other.others_seen
    other.observe("b", 3, now)
    assert other.others_seen
    assert other.for_message(["b"], 3) == pytest.approx(2.0)
    assert seconds(other, "b", 3) == 0
    other.observe("c", 1, now)
    other.observe("c", 2, now)  # only ever received here, yet handed back at once
    assert seconds(other, "c", 2) == 0
    ladder = []
    for count in range(3, hot_receives(2.0) + 3):
        other.observe("c", count, now)
        ladder.append(seconds(other, "c", count))
    assert ladder == [0] * (hot_receives(2.0) - 2) + [1, 2]
    # Received 7 times, 2 of them here: about 3.5 pollers.
    other.observe("d", 4, now)
    other.observe("d", 7, now)
    assert other.for_message(["d"], 7) == pytest.approx(3.5)
    # Messages sent before the estimate started say nothing of others (a restarted triggerer
    # finds them received many times by its former self).
    restarted = PollerEstimate()
    restarted.observe("old", 40, datetime(2020, 1, 1, tzinfo=UTC))
    assert not restarted.others_seen
    # Received 60 times, 20 of them here: about 3 pollers, all of which had it many times over.
    many = PollerEstimate()
    for count in range(3, 63, 3):
        many.observe("c", count, now)
    assert many.for_message(["c"], 60) == pytest.approx(3.0)
    assert hot_receives(3.0) < 60
    assert seconds(many, "c", 60) == 60


def test_once_the_estimate_has_settled_a_message_nobody_wants_goes_on_the_ladder_after_meeting_every_poller() -> (
    None
):
    """
    Four pollers, the estimate settled near 4: a message nobody wants, received 60 times, 3 of
    them here, reads 20 pollers by its own counts; it is not handed back at once for that, but
    waits as the estimate says (before the estimate settled, its own counts would count).
    """
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC) + timedelta(seconds=5)
    callback = delivery(count=1).callback
    settled = PollerEstimate()
    for i in range(100):
        settled.observe(f"n{i}", 4, now)
        settled.observe(f"n{i}", 8, now)
    assert settled.value == pytest.approx(4.0, abs=0.01)
    for count in (20, 40, 60):
        settled.observe("noise", count, now)
    assert settled.value < 6  # its samples move the estimate a little
    assert settled.for_message(["noise"], 60) == settled.value
    assert hot_receives(settled.value) < 60
    decision = decide(Delivery(callback, ("r",), ("noise",), 60), None, Knowledge(Steps(), pollers=settled))
    assert decision.seconds == 60
    # The same counts before the estimate settled: 60 / 3 pollers, still handed back at once.
    fresh = PollerEstimate()
    for count in (20, 40, 60):
        fresh.observe("noise", count, now)
    assert fresh.samples < 20
    assert fresh.for_message(["noise"], 60) == pytest.approx(20.0)
    assert (
        decide(Delivery(callback, ("r",), ("noise",), 60), None, Knowledge(Steps(), pollers=fresh)).seconds
        == 0
    )


def test_a_message_s_first_receive_time_is_read_from_sqs() -> None:
    item = message("Ab3dE6gH9k", count=3)
    item["Attributes"].update(
        {"SentTimestamp": "1796000000000", "ApproximateFirstReceiveTimestamp": "1796000001500"}
    )
    meta = sqs_metadata(item)
    assert meta["first_received_at"].timestamp() == 1796000001.5
    assert meta["sent_at"].timestamp() == 1796000000.0
    assert CallbackMessage.from_sqs(item).first_received_at == meta["first_received_at"]
    assert "first_received_at" not in CallbackMessage.from_sqs(item).to_dict()  # not for XCom
    item["Attributes"]["ApproximateFirstReceiveTimestamp"] = "soon"
    assert sqs_metadata(item)["first_received_at"] is None  # unreadable: as if absent
    bad = ReceivedMessages.parse(
        [{**item, "Body": "{", "Attributes": {"ApproximateFirstReceiveTimestamp": "5000"}}]
    )
    assert bad.invalid[0].first_received_at is not None
    # Of a token's messages in one receive, the earliest first receive counts.
    early = message("Ab3dE6gH9k", mid="x")
    early["Attributes"]["ApproximateFirstReceiveTimestamp"] = "1796000000500"
    (grouped,) = sort(
        [
            ReceivedMessages.parse(
                [item | {"Attributes": {"ApproximateFirstReceiveTimestamp": "1796000001500"}}, early]
            )
        ],
        Knowledge(Steps()),
    ).deliveries
    assert grouped.first_received_at is not None
    assert grouped.first_received_at.timestamp() == 1796000000.5


def test_by_age_the_immediate_hand_backs_end_and_every_poller_gives_a_message_the_same_delay() -> None:
    """
    Known since when a message is around (its first receive, on SQS's clock), every poller gives
    it the same delay once its immediate hand-backs are over, whatever it estimates; they end
    ``HOT_SECONDS`` after its first receive at the latest.
    """
    # One poller: the same doubling as by receive count.
    assert [
        backoff_visibility(n, age=a) for n, a in ((1, 0.0), (2, 0.05), (3, 1.05), (4, 3.1), (5, 7.1))
    ] == [
        0,
        1,
        2,
        4,
        8,
    ]
    assert backoff_visibility(12, age=300.0) == 60
    # Two pollers whose estimates differ (2.4 and 5.3): by count, they disagree for long.
    low, high = 2.4, 5.3
    count = hot_receives(low) + 3
    assert backoff_visibility(count, pollers=low) != backoff_visibility(count, pollers=high) == 0
    # By age they agree once the hot phase is over.
    assert (
        backoff_visibility(count, pollers=low, age=40.0)
        == backoff_visibility(count, pollers=high, age=40.0)
        == 41
    )
    # Within its first HOT_SECONDS, hot as the counts say; after, not even for a high estimate.
    assert backoff_visibility(count, pollers=high, age=HOT_SECONDS - 1) == 0
    assert backoff_visibility(count, pollers=high, age=HOT_SECONDS) == int(HOT_SECONDS) + 1
    # The first time a poller sees it, at once still.
    assert backoff_visibility(count, pollers=low, age=100.0, first_here=True) == 0


def test_a_message_s_age_is_read_on_sqs_s_clock_when_this_host_s_is_off() -> None:
    from datetime import UTC, datetime, timedelta

    skewed = PollerEstimate()
    assert skewed.age(None) is None
    sqs_now = datetime.now(UTC) - timedelta(seconds=100)  # this host's clock is 100 s ahead
    assert skewed.age(sqs_now) == pytest.approx(100, abs=1)  # before any first receive: taken as is
    for i in range(5):  # first receives: SQS's clock read a moment ago
        skewed.observe(f"n{i}", 1, first_received_at=sqs_now)
    assert skewed.age(sqs_now) == pytest.approx(0, abs=1)
    assert skewed.age(sqs_now - timedelta(seconds=40)) == pytest.approx(40, abs=1)


def test_a_message_around_for_hot_seconds_is_looked_up_and_waits_whatever_the_estimate() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC) + timedelta(seconds=5)
    eight = PollerEstimate()
    for i in range(40):
        eight.observe(f"n{i}", 8, now)
        eight.observe(f"n{i}", 16, now)
    assert hot_receives(eight.value) > 20
    callback = delivery(count=1).callback
    young = Delivery(callback, ("r",), ("m",), 12, datetime.now(UTC) - timedelta(seconds=5))
    decision = decide(young, None, Knowledge(Steps(), pollers=eight))
    assert (decision.seconds, decision.lookup) == (0, None)
    eight.observe("m", 12)
    eight.observe("m", 20)  # seen here twice: not its first time here
    old = Delivery(callback, ("r",), ("m",), 20, datetime.now(UTC) - timedelta(seconds=HOT_SECONDS + 10))
    decision = decide(old, None, Knowledge(Steps(), pollers=eight))
    assert decision.seconds == pytest.approx(HOT_SECONDS + 11, abs=1)
    assert decision.lookup == ARN.format("a")


def test_a_message_whose_hand_off_was_released_here_is_handed_back_at_once() -> None:
    """
    Its task was restarted and waits for it anew, maybe in another triggerer: each time it comes
    here on its way it goes back at once, not on the growing delay (up to the most hot receives).
    """
    released = Delivery(delivery(count=9).callback, ("r",), ("m",), 9)
    token = released.token
    plain = Knowledge(Steps(), HandOffs(handed={token: {"m"}}))
    assert decide(released, None, plain).seconds == backoff_visibility(9) == 60
    knowing = Knowledge(Steps(), HandOffs(handed={token: {"m"}}, released_tokens={token}))
    decision = decide(released, None, knowing)
    assert (decision.verdict, decision.reason, decision.seconds) == (Verdict.HAND_BACK, Reason.UNWANTED, 0)
    past = Delivery(released.callback, ("r",), ("m",), MAX_HOT_RECEIVES + 1)
    assert decide(past, None, knowing).seconds == 60


def test_the_ledger_says_a_released_hand_off_s_token_released_for_a_while() -> None:
    from airflow_sm_callback.triggers.handoffs import HandOffLedger, TaskKey

    ledger = HandOffLedger()
    item = Delivery(delivery(count=1).callback, ("r",), ("m",), 1)
    owner = TaskKey("d", "r", "t")
    handoff = ledger.record(item, Claim("c", hold=300, owner=owner, deleted_by="triggerer"))
    assert handoff is not None
    assert not ledger.released(item.token)
    ledger.release(handoff)
    assert ledger.released(item.token)
    assert ledger.get(owner) is None  # forgotten: its messages are back on the queue
    ledger.release(handoff, remember=-1.0)
    assert not ledger.released(item.token)


def test_sort_groups_a_token_s_messages_stopping_wins_and_sets_copies_and_the_unusable_apart() -> None:
    handoffs = HandOffs(handed={"Zz9yX8wV7u": {"m-orig"}})
    received = ReceivedMessages.parse(
        [
            message("Ab3dE6gH9k", count=1),
            message("Ab3dE6gH9k", status="Stopping", count=3),
            message("Zz9yX8wV7u", mid="m-orig"),  # the original of a hand-off, back
            message("Zz9yX8wV7u", mid="m-copy"),  # a further copy of it
            {"MessageId": "junk", "ReceiptHandle": "r-junk", "Body": "not json"},
        ]
    )
    result = sort([received], Knowledge(Steps(), handoffs))
    by_token = {d.token: d for d in result.deliveries}
    first = by_token["Ab3dE6gH9k"]
    assert first.callback.is_stopping
    assert len(first.receipt_handles) == 2
    assert first.receive_count == 3
    assert by_token["Zz9yX8wV7u"].message_ids == ("m-orig",)
    assert result.copies == ("r-m-copy",)
    assert [bad.message_id for bad in result.invalid] == ["junk"]


@pytest.mark.parametrize(
    ("matcher", "steps", "handoffs", "expected"),
    [
        pytest.param(CallbackMatcher(pipeline_execution_arn=ARN.format("a")), Steps(), HandOffs(), (Want.YES, None), id="claim"),
        pytest.param(CallbackMatcher(pipeline_execution_arn=ARN.format("b")), Steps(), HandOffs(), (Want.NO, None), id="another-execution"),
        pytest.param(CallbackMatcher(arguments={"n": 2}), Steps(), HandOffs(), (Want.NO, None), id="other-arguments"),
        pytest.param(CallbackMatcher(pipeline_name="p"), Steps(closed={"Ab3dE6gH9k"}), HandOffs(), (Want.NO, None), id="step-closed"),
        pytest.param(CallbackMatcher(pipeline_name="p"), Steps(), HandOffs(landed_tokens={"Ab3dE6gH9k"}), (Want.NO, None), id="landed"),
        pytest.param(CallbackMatcher(step_name="Score"), Steps(), HandOffs(), (Want.LOOK_UP, None), id="step-name-unknown"),
        pytest.param(CallbackMatcher(step_name="Score"), Steps(names={"Ab3dE6gH9k": "Score"}), HandOffs(), (Want.YES, "Score"), id="step-name"),
        pytest.param(CallbackMatcher(step_name="Score"), Steps(names={"Ab3dE6gH9k": "Approve"}), HandOffs(), (Want.NO, None), id="other-step"),
        pytest.param(CallbackMatcher(pipeline_name="p"), Steps(names={"Ab3dE6gH9k": "Score"}), HandOffs(), (Want.YES, "Score"), id="name-known"),
    ],
)  # fmt: skip
def test_what_a_waiter_wants(
    matcher: CallbackMatcher, steps: Steps, handoffs: HandOffs, expected: tuple[Want, str | None]
) -> None:
    assert wants(matcher, delivery(), Knowledge(steps, handoffs)) == expected


def test_a_claim_for_a_task_is_held_and_recorded() -> None:
    decision = decide(delivery(), Claim(1, hold=900, owner="task"), Knowledge(Steps()))
    assert decision == Decision(Verdict.HOLD, Reason.CLAIMED, ("r-Ab3dE6gH9k",), seconds=900, record=True)


def test_a_watcher_s_claim_is_deleted_once_durable() -> None:
    decision = decide(delivery(), Claim(1), Knowledge(Steps()))
    assert (decision.verdict, decision.reason, decision.record) == (Verdict.DELETE, Reason.HANDED_ON, True)


def test_a_copy_claimed_by_the_trigger_that_fired_is_deleted_but_never_counts_as_the_hand_off() -> None:
    decision = decide(delivery(), Claim(1, hold=900, copy=True), Knowledge(Steps()))
    assert (decision.verdict, decision.reason, decision.record) == (Verdict.DELETE, Reason.COPY, False)


@pytest.mark.parametrize(
    "claim", [Claim(1, hold=900), Claim(1), Claim(1, copy=True)], ids=["task", "watcher", "copy"]
)
def test_a_claim_whose_hand_off_failed_is_handed_back_at_once(claim: Claim) -> None:
    decision = decide(delivery(count=5), claim, Knowledge(Steps(closed={"Ab3dE6gH9k"})), clean=False)
    assert decision == Decision(Verdict.HAND_BACK, Reason.NOT_DURABLE, ("r-Ab3dE6gH9k",), seconds=0)


def test_a_message_whose_step_is_closed_is_deleted_as_stale() -> None:
    decision = decide(delivery(), None, Knowledge(Steps(closed={"Ab3dE6gH9k"})))
    assert (decision.verdict, decision.reason) == (Verdict.DELETE, Reason.STALE)


def test_a_message_whose_receiver_has_it_is_deleted_as_a_duplicate() -> None:
    decision = decide(delivery(), None, Knowledge(Steps(), HandOffs(landed_tokens={"Ab3dE6gH9k"})))
    assert (decision.verdict, decision.reason) == (Verdict.DELETE, Reason.LANDED)


def test_an_unwanted_message_is_handed_back_at_once_then_with_a_growing_delay_and_a_look_up() -> None:
    first = decide(delivery(count=1), None, Knowledge(Steps()))
    assert first == Decision(Verdict.HAND_BACK, Reason.UNWANTED, ("r-Ab3dE6gH9k",), seconds=0)
    again = decide(delivery(count=4), None, Knowledge(Steps()))
    assert (again.verdict, again.seconds, again.lookup) == (Verdict.HAND_BACK, 4, ARN.format("a"))
    known = decide(delivery(count=4), None, Knowledge(Steps(fresh={"Ab3dE6gH9k"})))
    assert known.lookup is None  # what is known is fresh: no look-up


def test_with_several_pollers_an_unwanted_message_is_looked_up_only_once_it_has_surely_met_them_all() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC) + timedelta(seconds=5)
    four = PollerEstimate()
    for i in range(40):  # four pollers taking turns
        four.observe(f"n{i}", 4, now)
        four.observe(f"n{i}", 8, now)
    hot = hot_receives(four.value)
    assert hot > 2
    callback = delivery(count=1).callback
    # A message nobody here wants, received here every fourth time.
    looked_up = []
    for count in range(4, 4 * hot, 4):
        four.observe("m", count, now)
        decision = decide(Delivery(callback, ("r",), ("m",), count), None, Knowledge(Steps(), pollers=four))
        looked_up.append((count, decision.lookup))
    # Every other triggerer would look its steps up from its second receive: not before it met them all.
    assert all(lookup is None for count, lookup in looked_up if count <= hot)
    assert all(lookup == ARN.format("a") for count, lookup in looked_up if count > hot)


def test_the_original_of_a_hand_off_coming_back_is_handed_back_and_flagged() -> None:
    handoffs = HandOffs(handed={"Ab3dE6gH9k": {"m-Ab3dE6gH9k"}})
    decision = decide(delivery(count=2), None, Knowledge(Steps(), handoffs))
    assert (decision.verdict, decision.came_back, decision.seconds) == (Verdict.HAND_BACK, True, 1)


@pytest.mark.parametrize(
    "body", ["not json", '{"Records": [{"eventSource": "aws:s3"}]}', '{"token": "short"}']
)
def test_malformed_and_foreign_messages_are_handed_back_never_deleted(body: str) -> None:
    (bad,) = ReceivedMessages.parse(
        [
            {
                "MessageId": "x",
                "ReceiptHandle": "r-x",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": "3"},
            }
        ]
    ).invalid
    assert isinstance(bad, UnparsedMessage)
    decision = decide_invalid(bad)
    assert decision == Decision(Verdict.HAND_BACK, Reason.UNUSABLE, ("r-x",), seconds=2)


def test_visibility_changes_name_each_handle_once_and_a_delete_wins() -> None:
    decisions = [
        Decision(Verdict.HOLD, Reason.CLAIMED, ("h1",), seconds=900),
        Decision(Verdict.DELETE, Reason.STALE, ("d1", "d1")),
        Decision(Verdict.HAND_BACK, Reason.UNWANTED, ("d1", "b1"), seconds=4),
    ]
    assert visibility_changes(decisions) == (["d1"], [("h1", 900), ("b1", 4)])
