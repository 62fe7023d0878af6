#!/usr/bin/env python3
"""A wss:// probe using only Python's standard library: TLS to the edge verified against a CA,
the WebSocket upgrade, then reads connect.challenge and answers with a connect the edge must
refuse. Prints one JSON line with what it saw. Used by wss_test.sh.

usage: wss_probe.py PORT CA_FILE
"""
import base64
import json
import os
import socket
import ssl
import struct
import sys


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def read_frame(sock):
    b1, b2 = read_exact(sock, 2)
    length = b2 & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b1 & 0x0F, read_exact(sock, length)


def send_text(sock, text):
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def main():
    port, ca = int(sys.argv[1]), sys.argv[2]
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    status = head.split(b"\r\n")[0].decode()
    opcode, payload = read_frame(sock)
    challenge = json.loads(payload)
    send_text(sock, json.dumps({"type": "req", "id": "1", "method": "connect",
                                "params": {"minProtocol": 4, "maxProtocol": 4}}))
    opcode, payload = read_frame(sock)
    response = json.loads(payload)
    close_code = None
    try:
        opcode, payload = read_frame(sock)
        if opcode == 8 and len(payload) >= 2:
            close_code = struct.unpack("!H", payload[:2])[0]
    except (EOFError, OSError):
        pass
    print(json.dumps({"status": status, "tls": sock.version(),
                      "challenge_event": challenge.get("event"),
                      "nonce": challenge.get("payload", {}).get("nonce"),
                      "error_code": response.get("error", {}).get("code"),
                      "close_code": close_code}))


main()
