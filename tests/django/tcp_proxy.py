"""A TCP proxy for the node tier's native sidecar: listens on LISTEN (host:port) and relays
every connection to TARGET (host:port), logging one line per connection, as a
cloud-sql-proxy or pgbouncer sidecar stands between a Django pod and its database."""

import asyncio
import os


def address(name):
    host, _, port = os.environ[name].rpartition(":")
    return host, int(port)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def relay(client_reader, client_writer):
    peer = client_writer.get_extra_info("peername")
    try:
        server_reader, server_writer = await asyncio.open_connection(*address("TARGET"))
    except OSError as error:
        print(f"tcp-proxy: {peer} -> {os.environ['TARGET']} failed: {error}", flush=True)
        client_writer.close()
        return
    print(f"tcp-proxy: {peer} -> {os.environ['TARGET']}", flush=True)
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(relay, *address("LISTEN"))
    print(f"tcp-proxy: listening on {os.environ['LISTEN']}, relaying to {os.environ['TARGET']}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
