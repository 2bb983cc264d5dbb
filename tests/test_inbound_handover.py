"""The simulated network's hand-over hook, which bench/inbound.py times messages by."""

from __future__ import annotations

import trio

from gatewayd.whatsapp.port import ClientEvent, Connected, MessageReceived
from gatewayd.whatsapp.sim import SimulatedWhatsApp

USER = "628222000222"


class RecordingSink:
    """An event sink noting, for each event, how many hand-overs had been announced."""

    def __init__(self, announced: list[ClientEvent]) -> None:
        self.announced = announced
        self.seen: list[tuple[int, ClientEvent]] = []
        self.arrived = trio.Event()

    async def send(self, value: ClientEvent) -> None:
        self.seen.append((len(self.announced), value))
        self.arrived.set()


async def test_every_event_is_announced_just_before_the_sink_gets_it(
    nursery: trio.Nursery,
) -> None:
    """The hook sees each event of a connection once, in order, right before ``send``."""
    sim = SimulatedWhatsApp(seed=3)
    announced: list[ClientEvent] = []
    sim.on_handover = announced.append
    client = sim.client("bot")
    send, receive = trio.open_memory_channel[ClientEvent](10)
    async with trio.open_nursery() as pairing:
        await pairing.start(client.pair, send)
        paired = sim.scan("bot", "628111000111")
    assert announced == []  # pairing hands nothing over through the hook
    sink = RecordingSink(announced)
    await nursery.start(client.run, paired.device_jid, sink)
    ids = [sim.inject_text("bot", USER, f"m{n}").id for n in range(3)]
    while len(sink.seen) < 4:
        sink.arrived = trio.Event()
        await sink.arrived.wait()
    assert [type(e) for e in announced] == [Connected, *[MessageReceived] * 3]
    assert [e.message.id for e in announced if isinstance(e, MessageReceived)] == ids
    # The n-th event reached the sink when exactly n events had been announced.
    assert [(n, e) for n, e in sink.seen] == [(n + 1, e) for n, e in enumerate(announced)]
