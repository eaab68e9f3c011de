#!/usr/bin/env python3
"""Healthy engines at distinct loopback addresses, for measuring the worker's descriptors
and memory against a large fleet (RELIABILITY.md, "Descriptors and memory").

    python3 benches/distinct_fleet.py --engines 10000 --first 0 --port 18200 > endpoints.txt

Engine i listens on 127.0.(i // 250 + 1).(i % 250 + 1):PORT and answers GET /healthz with
200 "ok", keeping the connection alive unless the request says `Connection: close`. One
line per engine on stdout (`game-NNNNN http://addr:port`), then it serves until killed.
Each engine costs this process a listener plus one descriptor per open connection: run
several processes (--first) when the hard limit is below twice the fleet.
"""

import argparse
import asyncio
import resource
import sys

RESPONSE_KEEP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            writer.write(RESPONSE_CLOSE if close else RESPONSE_KEEP)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = []
    for i in range(args.first, args.first + args.engines):
        host = f"127.0.{i // 250 + 1}.{i % 250 + 1}"
        servers.append(await asyncio.start_server(serve, host, args.port, backlog=64))
        print(f"game-{i:05d} http://{host}:{args.port}")
    sys.stdout.flush()
    await asyncio.Event().wait()


asyncio.run(main())
