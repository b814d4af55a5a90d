"""The baseline: a bare grpc.aio echo server, configured like the broker's server.

    python -m bench.echo --listen HOST:PORT

/bench.Echo/Unary answers each request with its own bytes; /bench.Echo/Stream answers
each message of a bidirectional stream with its bytes, written in the same async
generator style as the broker's metering servicer. No (de)serialisation, no auth, no
store: what is left is the cost of grpc.aio itself, the ceiling the broker is held to.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

UNARY = "/bench.Echo/Unary"
STREAM = "/bench.Echo/Stream"


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _stream(requests, context: grpc.aio.ServicerContext):
    async for message in requests:
        yield message


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 64 * 1024)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.stream_stream_rpc_method_handler(_stream),
    }),))
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))
