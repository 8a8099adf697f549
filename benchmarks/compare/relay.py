#!/usr/bin/env python3
"""A counting, delaying TCP relay for the comparison harness (stdlib only, asyncio).

    relay.py --listen HOST:PORT --target HOST:PORT [--delay-ms MS]

Every tool's client talks to its server through this relay, so wire bytes are counted the
same way for all of them: TCP payload bytes in each direction (HTTP headers and rsync's
protocol included; TCP/IP headers not). With --delay-ms > 0 it also stands in for the WAN
delay that this kernel cannot add (no netem): each piece of data read from one side is
written to the other side MS milliseconds after it was read, in order, independently per
direction and per connection (a timestamped queue per direction). Any number of
connections may be open at once.

Port 0 picks a free port; the chosen one is printed on stdout as `listening PORT`.
Commands on stdin, one per line, each answered by one JSON line on stdout:
  stats   -> {"up": client-to-server bytes, "down": server-to-client bytes,
              "connections": accepted since the last reset, "active": open now}
  reset   -> zeroes the counters, answers the stats before the reset
End of stdin (or SIGTERM) stops the relay.
"""

import argparse
import asyncio
import json
import signal
import sys
import threading

READ_SIZE = 256 * 1024
# Pieces queued per direction before the relay stops reading from that side: keeps memory
# bounded and lets TCP flow control reach the sender (64 x 256 KiB = 16 MiB at most).
QUEUE_PIECES = 64


class Relay:
    def __init__(self, target_host, target_port, delay):
        self.target = (target_host, target_port)
        self.delay = delay
        self.stats = {"up": 0, "down": 0, "connections": 0, "active": 0}

    async def pipe(self, reader, writer, key):
        """Copies reader to writer, each piece `delay` seconds after it was read."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue(QUEUE_PIECES)

        async def receive():
            try:
                while True:
                    data = await reader.read(READ_SIZE)
                    self.stats[key] += len(data)
                    await queue.put((loop.time() + self.delay, data))
                    if not data:  # end of stream, forwarded as a half-close
                        return
            except (ConnectionError, OSError):
                await queue.put((loop.time(), None))  # reset: close the other side now

        async def send():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    writer.close()
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        rx = asyncio.create_task(receive())
        try:
            await send()
        finally:
            rx.cancel()

    async def handle(self, c_reader, c_writer):
        self.stats["connections"] += 1
        self.stats["active"] += 1
        s_writer = None
        try:
            # A real WAN connection costs one round trip before the first byte can go (the
            # handshake); the client's connect succeeded locally at once, so wait it here.
            if self.delay > 0:
                await asyncio.sleep(2 * self.delay)
            s_reader, s_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=30)
            await asyncio.gather(self.pipe(c_reader, s_writer, "up"),
                                 self.pipe(s_reader, c_writer, "down"),
                                 return_exceptions=True)
        except (OSError, asyncio.TimeoutError) as e:
            print(f"relay: connection to {self.target} failed: {e}", file=sys.stderr)
        finally:
            self.stats["active"] -= 1
            for w in (c_writer, s_writer):
                if w is not None:
                    w.close()

    def command(self, line):
        cmd = line.strip()
        snap = dict(self.stats)
        if cmd == "reset":
            self.stats.update(up=0, down=0, connections=0)
        elif cmd != "stats":
            snap = {"error": f"unknown command {cmd!r}"}
        return json.dumps(snap)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    lhost, lport = a.listen.rsplit(":", 1)
    thost, tport = a.target.rsplit(":", 1)
    relay = Relay(thost, int(tport), a.delay_ms / 1000.0)
    server = await asyncio.start_server(relay.handle, lhost, int(lport), backlog=256)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))

    # Commands come on stdin, read on a daemon thread so the event loop never blocks on it
    # (and exit never waits for it).
    lines = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()

    async def commands():
        while True:
            line = await lines.get()
            if line is None:
                return
            # Let data in flight through the delay land first.
            await asyncio.sleep(relay.delay + 0.05)
            print(relay.command(line), flush=True)

    cmd_task = asyncio.create_task(commands())
    await asyncio.wait([cmd_task, stop], return_when=asyncio.FIRST_COMPLETED)
    server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
