"""The ceiling: a bare Python UDP echo (recvfrom_into/sendto in two threads).

One thread echoes every datagram back; the other sends ``requests`` requests
of ``size`` bytes with at most ``concurrency`` outstanding. Nothing a Python
request handler does can be faster than this on the same interpreter. With
``pin`` both threads run on one CPU (like ``dht-pinned``); the report takes
the faster of the two as the ceiling.
"""

from __future__ import annotations

import os
import socket
import threading
import time


def run_echo(
    requests: int = 5000, concurrency: int = 1, size: int = 160, pin: bool = False
) -> dict[str, object]:
    if pin:  # before the echo thread starts, so it inherits the mask
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client.bind(("127.0.0.1", 0))
    client.settimeout(5.0)
    address = server.getsockname()
    stop = threading.Event()

    def echo() -> None:
        buffer = bytearray(2048)
        while not stop.is_set():
            n, source = server.recvfrom_into(buffer)
            if n == 1:  # the stop signal
                return
            server.sendto(memoryview(buffer)[:n], source)

    thread = threading.Thread(target=echo, name="echo")
    thread.start()
    payload = bytes(size)
    buffer = bytearray(2048)
    answered = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        sent = 0
        while sent < min(concurrency, requests):
            client.sendto(payload, address)
            sent += 1
        while answered < requests:
            client.recvfrom_into(buffer)
            answered += 1
            if sent < requests:
                client.sendto(payload, address)
                sent += 1
    finally:
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        stop.set()
        client.sendto(b"x", address)
        thread.join(5.0)
        server.close()
        client.close()
    return {
        "impl": "udp-echo-pinned" if pin else "udp-echo",
        "workload": "micro",
        "concurrency": concurrency,
        "requests": requests,
        "ops_per_s": answered / seconds,
        "success_pct": 100.0 * answered / requests,
        "cpu_s": cpu,
        "seconds": seconds,
    }


if __name__ == "__main__":
    import json
    import sys

    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    concurrency = int(params.get("concurrency", 1))
    print(json.dumps(run_echo(concurrency=concurrency, pin=bool(params.get("pin")))))
