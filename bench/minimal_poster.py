"""The least a poster can do through the local gateway: a baseline for the fan-out's latency.

``python -m bench.minimal_poster PORT STAGE WORKERS`` opens WORKERS keep-alive connections to the
gateway's Management API and then, for each line of JSON connection ids it reads, posts the line's
payload to every id, WORKERS at a time, one request after another on each connection, and prints the
seconds it took. It signs nothing (the gateway checks an Authorization header's form, not its
signature), reads each answer's head only and runs in its own process, so beside our app in the
same gateway it shows what the gateway, the clients and this machine's two cores cost a fan-out of
that many posts in flight, whatever poster makes it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

_AUTHORIZATION = (
    "AWS4-HMAC-SHA256 Credential=AKIDMINIMALPOSTER/20260101/us-east-1/execute-api/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)


async def _post_all(connections, stage: str, ids: list[str], payload: bytes) -> None:
    pending = list(reversed(ids))

    async def post_in_turn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while pending:
            connection_id = pending.pop()
            writer.write(
                f"POST /{stage}/@connections/{connection_id} HTTP/1.1\r\nHost: localgw\r\n"
                f"Authorization: {_AUTHORIZATION}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"minimal poster: {connection_id}: {head.splitlines()[0].decode()}")

    await asyncio.gather(*(post_in_turn(*connection) for connection in connections))


async def main(port: int, stage: str, workers: int) -> None:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(workers)]
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print("ready", flush=True)
    while line := await commands.readline():
        publish = json.loads(line)
        started = time.perf_counter()
        await _post_all(connections, stage, publish["ids"], publish["payload"].encode())
        print(time.perf_counter() - started, flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
