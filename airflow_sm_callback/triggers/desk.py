"""
The claim desk of a shared stream: the API its producer offers the triggers' filters.

The producer broadcasts each batch of callbacks as a :class:`CallbackBatch`, an immutable
snapshot that carries its desk. A filter that wants a delivery *claims* it at the desk
(:meth:`StreamDesk.claim`: the first claim of a delivery wins), and the producer reads the
claims back from the desk when Airflow advances the batch. Claims are values the desk keeps by
batch and token, never attributes written into the broadcast event, so nothing relies on every
subscriber receiving the same object. The desk also holds what the filters share: one hook (one
pair of async clients), the step directory with single-flight look-ups, and batched masking of
the tokens they claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_sm_callback import _airflow
from airflow_sm_callback.hooks.errors import describe_error
from airflow_sm_callback.protocol import routing

if TYPE_CHECKING:
    from airflow_sm_callback.hooks.callback import SageMakerCallbackHook
    from airflow_sm_callback.triggers.handoffs import HandOffLedger

__all__ = ["CallbackBatch", "StreamDesk", "TokenMasker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False, slots=True)
class CallbackBatch:
    """One raw event of the shared stream: the callbacks of one or more receives, by token."""

    id: int
    deliveries: tuple[routing.Delivery, ...]
    desk: StreamDesk
    received_at: float = field(default_factory=time.monotonic)
    _by_execution: dict[str, tuple[routing.Delivery, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, id: int, deliveries: Sequence[routing.Delivery], desk: StreamDesk) -> CallbackBatch:
        """A batch with its per-execution index (built once: every trigger sees every batch)."""
        index: dict[str, list[routing.Delivery]] = {}
        for delivery in deliveries:
            index.setdefault(delivery.callback.pipeline_execution_arn, []).append(delivery)
        return cls(id, tuple(deliveries), desk, _by_execution={k: tuple(v) for k, v in index.items()})

    def for_execution(self, execution_arn: str) -> Sequence[routing.Delivery]:
        """The deliveries of one pipeline execution (a trigger waiting for one looks it up here)."""
        return self._by_execution.get(execution_arn, ())


class TokenMasker:
    """
    Masks the tokens that triggers claim, in batches: the claims made in one turn of the event
    loop (every trigger handling one broadcast batch) share one registration, made before any of
    them yields its event (see :func:`~airflow_sm_callback._airflow.register_tokens` for why).
    """

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._flush: asyncio.Task[None] | None = None

    async def mask(self, token: str) -> None:
        """Return once ``token`` is masked (with the others claimed in the same turn)."""
        self._pending.append(token)
        if self._flush is None:
            # Created now, it runs after every task already scheduled for this turn.
            self._flush = asyncio.create_task(self._run())
        await asyncio.shield(self._flush)

    async def _run(self) -> None:
        tokens, self._pending = self._pending, []
        self._flush = None
        await _airflow.amask_secrets(tokens)


class StreamDesk:
    """
    Where the filters of one shared stream claim deliveries and look steps up; owned by its producer.

    :param hook: the stream's hook (its async clients serve every trigger on the stream).
    :param ledger: what this process's streams on the same queue and connection handed on.
    :param persist_confirmed: the producer advances a batch only once Airflow confirmed that the
        events derived from it persisted (Airflow's shared streams, 3.3+). The provider's own
        shared poll below 3.3 has no such confirmation: there an asset event's messages are held
        for the hand-off too, never deleted on the word of the event alone.
    :param pollers: the stream's estimate of how many processes receive from the queue.
    :param on_walked: called with a batch's id once every filter that was on the stream when it
        was broadcast has walked it: its unclaimed deliveries are settled then, without waiting
        for the persist of the events of the claimed ones (a message that another triggerer's
        waiter wants goes back to the queue at once).
    """

    def __init__(
        self,
        hook: SageMakerCallbackHook,
        queue_url: str,
        ledger: HandOffLedger,
        *,
        persist_confirmed: bool = True,
        pollers: routing.PollerEstimate | None = None,
        on_walked: Callable[[int], None] | None = None,
        lookup_concurrency: int = 4,
    ) -> None:
        self.hook = hook
        self.queue_url = queue_url
        self.ledger = ledger
        self.persist_confirmed = persist_confirmed
        #: What the routing policy reads: the hook's step directory, the ledger, the pollers.
        self.knowledge = routing.Knowledge(hook.steps, ledger, pollers)
        self._claims: dict[int, dict[str, routing.Claim]] = {}
        #: Batch id -> the filters that have not walked it yet.
        self._walkers: dict[int, set[Hashable]] = {}
        #: Batches whose unclaimed deliveries were settled: they take no new claim.
        self._settled: set[int] = set()
        self._on_walked = on_walked
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._lookup_slots = asyncio.Semaphore(lookup_concurrency)
        self._masker = TokenMasker()

    # -- claims ----------------------------------------------------------------------------------

    def open(self, batch_id: int, walkers: Iterable[Hashable] = ()) -> None:
        """
        Accept claims on a batch (the producer calls it before the broadcast), and wait for
        ``walkers``, the filters on the stream now, to walk it (none: settled when advanced).
        """
        self._claims[batch_id] = {}
        pending = set(walkers)
        if pending:
            self._walkers[batch_id] = pending

    def claim(self, batch_id: int, token: str, claim: routing.Claim) -> bool:
        """Claim the delivery of ``token`` in a batch; only the first claim wins."""
        claims = self._claims.get(batch_id)
        if claims is None:
            log.warning("A claim on batch %s, which this stream no longer holds, is refused", batch_id)
            return False
        if token in claims or batch_id in self._settled:
            return False
        claims[token] = claim
        return True

    def walked(self, batch_id: int, walker: Hashable) -> None:
        """``walker`` is done with a batch: it claims nothing more in it."""
        pending = self._walkers.get(batch_id)
        if pending is None or walker not in pending:
            return
        pending.discard(walker)
        if not pending:
            del self._walkers[batch_id]
            if batch_id in self._claims:
                self._settled.add(batch_id)
                if self._on_walked is not None:
                    self._on_walked(batch_id)

    def left(self, walker: Hashable) -> None:
        """``walker`` left the stream: no batch waits for it any more."""
        for batch_id in [b for b, pending in self._walkers.items() if walker in pending]:
            self.walked(batch_id, walker)

    def claims_of(self, batch_id: int) -> dict[str, routing.Claim]:
        """The claims made on a batch so far, by token."""
        return dict(self._claims.get(batch_id, {}))

    def claim_of(self, batch_id: int, token: str) -> routing.Claim | None:
        """The claim that won the delivery of ``token`` in a batch, if any."""
        return self._claims.get(batch_id, {}).get(token)

    def close(self, batch_id: int) -> dict[str, routing.Claim]:
        """The claims of a batch, by token; the batch takes no more (the producer advances it)."""
        self._walkers.pop(batch_id, None)
        self._settled.discard(batch_id)
        return self._claims.pop(batch_id, {})

    # -- masking and step look-ups ---------------------------------------------------------------

    async def mask(self, token: str) -> None:
        """Register a claimed token with the secrets masker (batched with the other claims)."""
        await self._masker.mask(token)

    async def lookup(self, execution_arn: str) -> None:
        """Refresh the step directory from one listing of ``execution_arn`` (single-flight)."""
        await asyncio.shield(self._start_lookup(execution_arn))

    def lookup_later(self, execution_arn: str) -> None:
        """Start a look-up in the background (its answer serves the message's next delivery)."""
        self._start_lookup(execution_arn)

    def _start_lookup(self, execution_arn: str) -> asyncio.Task[None]:
        task = self._lookups.get(execution_arn)
        if task is None:
            task = asyncio.create_task(self._lookup(execution_arn))
            self._lookups[execution_arn] = task
            task.add_done_callback(lambda _: self._lookups.pop(execution_arn, None))
        return task

    async def _lookup(self, execution_arn: str) -> None:
        async with self._lookup_slots:
            try:
                await self.hook._arun(self.hook.lookup_op(execution_arn))
            except Exception as err:
                self.hook.log.info("Step look-up of %s failed: %s", execution_arn, describe_error(err))

    def step_closed(self, token: str) -> bool:
        """Whether the token's step is known to be closed."""
        return self.hook.steps.step_closed(token)

    async def aclose(self) -> None:
        """Stop the look-ups and close the hook's clients."""
        for task in list(self._lookups.values()):
            task.cancel()
        self._claims.clear()
        self._walkers.clear()
        self._settled.clear()
        await self.hook.aclose()
