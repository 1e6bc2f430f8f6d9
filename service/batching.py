"""Concurrent `/act` requests share one call of the act graph.

Requests that reach the event loop in the same turn are answered from one graph run on its next
turn: under load that is several per call, and a call costs about the same for one row as for
eight (24 us against 34 us on the benchmark machine). Nothing waits for company, so a lone request
pays one turn of the loop. Each request keeps its own answer (`Runtime.act_many`): rows are
independent in the graph, a failure stays with its request, and requests taken from different
runtimes (a reload between them) never share a call. Only the float rounding may differ: the
graph's kernels block their work by batch size, so a value can move in its last bit (1e-7
relative). A request with a `seed` asks for an answer it can reproduce exactly, so it gets a call
of its own.

gRPC's requests come on worker threads (`act_blocking`) and coalesce the same way: a request that
finds no call running makes one at once; those that arrive while it runs share the next, made by
the first of them.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from prometheus_client import Histogram

from .runtime import ActResult, HistoryInputs, Runtime


class ActBatcher:
    def __init__(self, requests_per_call: Histogram):
        self.pending: list[tuple[Runtime, tuple, asyncio.Future]] = []
        self.requests_per_call = requests_per_call
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []  # worker threads' requests, while a call runs
        self._calling = False

    async def act(self, runtime: Runtime, obs: np.ndarray, deterministic: bool, seed: int | None,
                  history: HistoryInputs | None = None) -> ActResult:
        loop = asyncio.get_running_loop()
        if not self.pending:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self.pending.append((runtime, (obs, deterministic, seed, history), future))
        return await future

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        for group, results in self._calls([(runtime, request) for runtime, request, _ in pending]):
            settle([(pending[i][2], result) for i, result in zip(group, results)])

    def act_blocking(self, runtime: Runtime, obs: np.ndarray, deterministic: bool, seed: int | None,
                     history: HistoryInputs | None = None) -> ActResult:
        """`act` for a worker thread: returns when its answer is there."""
        request = (obs, deterministic, seed, history)
        with self._lock:
            alone = not self._calling
            if alone:
                self._calling = True
            else:
                mine = _Waiting(runtime, request)
                self._waiting.append(mine)
        if alone:  # no call running: make one at once, for this request alone
            self.requests_per_call.observe(1)
            try:
                result = runtime.act_many([request])[0]
            finally:
                self._hand_on()
            if isinstance(result, Exception):
                raise result
            return result
        mine.done.wait()
        if mine.lead:  # woken to make the next call: for everyone waiting, this request among them
            with self._lock:
                waiting, self._waiting = self._waiting, []
            for group, results in self._calls([(w.runtime, w.request) for w in waiting]):
                for i, result in zip(group, results):
                    waiting[i].answer = result
            for w in waiting:
                if w is not mine:
                    w.done.set()
            self._hand_on()
        return mine.outcome()

    def _hand_on(self) -> None:
        """After a call: the first request that waited for it makes the next one, or nobody is calling."""
        with self._lock:
            if self._waiting:
                self._waiting[0].lead = True
                self._waiting[0].done.set()
            else:
                self._calling = False

    def _calls(self, requests: list[tuple[Runtime, tuple]]):
        """(indices, results) per graph call: requests of one runtime share one, a seeded request has its own."""
        groups: dict[tuple, list[int]] = {}
        for i, (runtime, request) in enumerate(requests):
            groups.setdefault((runtime, i if request[2] is not None else None), []).append(i)
        for group in groups.values():
            self.requests_per_call.observe(len(group))
            try:
                results = requests[group[0]][0].act_many([requests[i][1] for i in group])
            except Exception as err:  # a bug, not a client's mistake: every request of the call reports it
                results = [err] * len(group)
            yield group, results


class _Waiting:
    """A worker thread's request: its answer (a result or the error it gets) once a call made it."""

    def __init__(self, runtime: Runtime, request: tuple):
        self.runtime, self.request = runtime, request
        self.answer: ActResult | Exception | None = None
        self.lead = False  # woken to make the next call rather than with its answer
        self.done = threading.Event()

    def outcome(self) -> ActResult:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def settle(answers) -> None:
    """On the loop: each waiting request's own result, or the error it gets; one whose client went
    away (its future cancelled) is skipped."""
    for future, answer in answers:
        if future.done():
            continue
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)
