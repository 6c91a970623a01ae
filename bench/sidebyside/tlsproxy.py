#!/usr/bin/env python3
"""tlsproxy.py CONF: a TCP-to-TLS proxy, a peer of the side-by-side benchmark.

It stands in for the Python proxy the project's design notes measured
(maproxy, on tornado): each TCP client connection gets a TLS connection of
its own to the upstream, and bytes are copied both ways without reading DNS.
Standard library only (asyncio, ssl). CONF holds key=value lines: listen
(host:port), upstream (host:port), ca (PEM file to verify the upstream
against) and name (the name its certificate must carry).
"""
import asyncio
import ssl
import sys


def read_conf(path):
    conf = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                conf[key.strip()] = value.strip()
    return conf


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(conf):
    ctx = ssl.create_default_context(cafile=conf["ca"])  # verifies the chain and the name
    up_host, up_port = conf["upstream"].rsplit(":", 1)
    host, port = conf["listen"].rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(
                up_host, int(up_port), ssl=ctx, server_hostname=conf["name"])
        except (OSError, ssl.SSLError):
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    server = await asyncio.start_server(handle, host, int(port), reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(read_conf(sys.argv[1])))
