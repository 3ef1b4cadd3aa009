"""A fault-injecting TCP proxy for tests: forwards to an upstream, counts the bytes sent
downstream (upstream → client), cuts every connection when the running total passes each
of the given cut points, and can pace downstream bytes like a link of a given speed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence


class CuttingProxy:
    """Runs its own event loop in a thread; ``address`` is where clients connect."""

    def __init__(
        self, upstream: str, cut_points: Sequence[int] = (), bytes_per_second: int = 0
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.bytes_per_second = bytes_per_second  # 0: as fast as loopback goes
        self.cut_points = sorted(cut_points)
        self.downstream_bytes = 0
        self.cuts = 0
        self.address = ""
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, downstream=False),
            self._pipe(up_reader, writer, downstream=True),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, downstream: bool
    ) -> None:
        while True:
            data = await source.read(65536)
            if not data:
                sink.close()
                return
            if downstream:
                if self.cuts < len(self.cut_points):
                    room = self.cut_points[self.cuts] - self.downstream_bytes
                    if len(data) >= room:
                        data = data[: max(room, 0)]
                        self.downstream_bytes += len(data)
                        sink.write(data)
                        self.cuts += 1
                        self._cut_all()
                        return
                self.downstream_bytes += len(data)
                if self.bytes_per_second:
                    await asyncio.sleep(len(data) / self.bytes_per_second)
            sink.write(data)
            with contextlib.suppress(ConnectionError):
                await sink.drain()

    def _cut_all(self) -> None:
        """Drop every open connection at once, as a link failure does."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
