"""A real WebSocket echo server (websockets, asyncio API) for the proxy's tests.

CLI:  ws_server.py

Plain ws:// on 127.0.0.1 on a port the OS picks; prints one line
`READY <port>` on stdout once listening, and exits 0 on SIGTERM (or SIGINT).
Any path is accepted. Sends nothing on connect; then echoes every message:
  text T    -> text "echo:" + T
  binary B  -> binary B (unchanged)
except the text "!headers", answered with the text "headers:" + JSON of the
opening handshake's request headers ({"name": "value"}, names lower-cased,
repeated names joined with ", "), so a test can see what the proxy forwarded.
Messages up to 16 MiB.
"""

import asyncio
import json
import signal

from websockets.asyncio.server import serve


def headers_json(ws):
    seen = {}
    for name, value in ws.request.headers.raw_items():
        name = name.lower()
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return json.dumps(seen, sort_keys=True)


async def echo(ws):
    async for message in ws:
        if isinstance(message, str):
            if message == "!headers":
                await ws.send("headers:" + headers_json(ws))
            else:
                await ws.send("echo:" + message)
        else:
            await ws.send(message)


async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(echo, "127.0.0.1", 0, max_size=16 * 1024 * 1024) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"READY {port}", flush=True)
        await stop
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
