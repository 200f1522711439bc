#!/usr/bin/env python3
"""Tiny HTTP/1.1 keep-alive server over mutual TLS, only for testing loadgen.

Binds 127.0.0.1 on a free port and writes the port to --port-file.
Client certificates must be signed by --ca.  Paths:
  /ok         200 with Content-Length (echoes request body length)
  /chunked    200, chunked, with a chunk extension and a trailer
  /big        200, 1 MiB chunked in 64 KiB chunks
  /close      200 with "Connection: close", then closes
  /eof        200 without Content-Length, body ends when the server closes
  /interim    "100 Continue" then 200
  /flaky      every 4th request 503, otherwise 200
  /slow       answers after 2 s
  /garbage    not HTTP
  /client-id  200 if the form body's client_id equals the client certificate's CN, else 400
  /stats      JSON counters (connections, resumed sessions, requests by path and client CN)
"""

import argparse
import asyncio
import collections
import json
import ssl

stats = {
    "connections": 0,
    "resumed": 0,
    "tls_versions": collections.Counter(),
    "paths": collections.Counter(),
    "clients": collections.Counter(),
    "bad_body": 0,
}


def response(status, body, extra="", head=False):
    reason = {200: "OK", 503: "Service Unavailable"}.get(status, "X")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + (b"" if head else body)


async def handle(reader, writer):
    sslobj = writer.get_extra_info("ssl_object")
    stats["connections"] += 1
    stats["resumed"] += bool(sslobj.session_reused)
    stats["tls_versions"][sslobj.version()] += 1
    cert = writer.get_extra_info("peercert") or {}
    cn = dict(x[0] for x in cert.get("subject", ())).get("commonName", "-")
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
            n = int(hdrs.get("content-length", "0"))
            body = await reader.readexactly(n) if n else b""
            if len(body) != n:
                stats["bad_body"] += 1
            stats["paths"][path] += 1
            stats["clients"][cn] += 1
            client_close = hdrs.get("connection", "").lower() == "close"
            if path == "/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5;ext=1\r\nhello\r\n1\r\n \r\n"
                    b"A\r\nworld!!!!!\r\n0\r\nX-Trailer: yes\r\n\r\n"
                )
            elif path == "/big":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(16):
                    writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                writer.write(b"0\r\n\r\n")
            elif path == "/close":
                writer.write(response(200, b"bye", "Connection: close\r\n"))
                client_close = True
            elif path == "/eof":
                writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                client_close = True
            elif path == "/interim":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"ok"))
            elif path == "/flaky":
                writer.write(response(503 if stats["paths"][path] % 4 == 0 else 200, b"?"))
            elif path == "/slow":
                await asyncio.sleep(2)
                writer.write(response(200, b"slow"))
            elif path == "/garbage":
                writer.write(b"SPDY/9 what\r\n\r\n")
            elif path == "/client-id":
                form = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p)
                writer.write(response(200 if form.get("client_id") == cn else 400, b"id"))
            elif path == "/stats":
                out = json.dumps(stats).encode()
                writer.write(response(200, out, "Content-Type: application/json\r\n"))
            else:
                writer.write(response(200, b"ok %d\n" % len(body), head=method == "HEAD"))
            await writer.drain()
            if client_close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--port-file", required=True)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    with open(a.port_file, "w") as f:
        f.write(str(srv.sockets[0].getsockname()[1]))
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
