"""The connection cap: how it fits the descriptor limit, and which connection makes room."""

from __future__ import annotations

import asyncio

from dicomrpc_server.dicomweb.connections import REFUSING, ConnectionGate, Tally, connection_cap


def test_the_cap_leaves_two_thirds_of_the_free_descriptors() -> None:
    assert connection_cap(1000, 1 << 20, 30) == 1000
    assert connection_cap(1000, 256, 28) == (256 - 28) // 3 - REFUSING
    assert connection_cap(1000, 20, 18) == 1  # one connection, whatever is left


class Connection:
    def __init__(self) -> None:
        self.closed = False

    def evict(self) -> None:
        self.closed = True


def test_the_longest_idle_connection_makes_room_busy_ones_never() -> None:
    async def run() -> None:
        gate = ConnectionGate(2, Tally())
        first, second = Connection(), Connection()
        assert gate.admit() and gate.admit()
        gate.idle(first)
        gate.idle(second)
        gate.busy(first)  # a request arrives on the first
        assert gate.admit()  # the second, idle, made room
        assert second.closed and not first.closed
        gate.busy(second)
        assert not gate.admit()  # every place holds a request: 503
        assert gate.served == 2

    asyncio.run(run())
