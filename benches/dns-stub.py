#!/usr/bin/env python3
"""A loopback DNS responder for the benchmarks: NXDOMAIN, with an SOA for
negative caching, to every question. This machine's network is closed, so
without it every SPF/DMARC lookup of the benchmark's sender waits out the
resolver's timeout; a real MX has a resolver that answers.

    benches/dns-stub.py PORT      (UDP and TCP on 127.0.0.1; runs until killed)
"""
import socket
import struct
import sys
import threading

SOA_TTL = 3600


def name_end(msg, off):
    while msg[off] != 0:
        off += 1 + msg[off]
    return off + 1


def answer(query):
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    if qd != 1:
        return None
    qend = name_end(query, 12) + 4
    question = query[12:qend]
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", qid, 0x8003 | 0x0400 | rd | 0x0080, 1, 0, 1, 0)
    # Authority: ". SOA" with the negative-caching TTL as its minimum.
    rdata = b"\x00\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, SOA_TTL)
    soa = b"\x00" + struct.pack("!HHIH", 6, 1, SOA_TTL, len(rdata)) + rdata
    return header + question + soa


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            out = answer(data)
        except IndexError:
            out = None
        if out:
            sock.sendto(out, peer)


def serve_tcp_conn(conn):
    with conn:
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            data = b""
            while len(data) < n:
                more = conn.recv(n - len(data))
                if not more:
                    return
                data += more
            out = answer(data)
            if out:
                conn.sendall(struct.pack("!H", len(out)) + out)


def main():
    port = int(sys.argv[1])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(64)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
