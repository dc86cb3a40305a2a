"""A workflow that stays cached on its worker until signalled. No trio here: the sandbox re-imports it."""

from __future__ import annotations

from temporalio import workflow


@workflow.defn(name="Handover")
class Handover:
    def __init__(self) -> None:
        self._go = False

    @workflow.signal
    def go(self) -> None:
        self._go = True

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self._go)
        return "handed over"
