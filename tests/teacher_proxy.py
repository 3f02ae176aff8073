"""A loopback HTTP proxy in front of a real teacher server, for tests.

It counts what reaches the server (per request body, so a request sent twice
shows), injects faults from a plan (HTTP 500 or 429, or a dropped connection,
on chosen attempts of chosen requests), and can `kill -9` a client process
group the moment a chosen request arrives, before forwarding it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlparse

# plan(key, attempt) -> None (forward) | "500" | "429" | "503" | "drop" | "slow:<seconds>"
FaultPlan = Callable[[str, int], "str | None"]


def body_key(body: bytes) -> str:
    """A request's identity: its JSON body, canonicalised."""
    return hashlib.sha256(json.dumps(json.loads(body), sort_keys=True).encode()).hexdigest()[:16]


class TeacherProxy:
    def __init__(self, upstream_base_url: str, plan: FaultPlan | None = None):
        up = urlparse(upstream_base_url)
        self.up_host, self.up_port, self.up_prefix = up.hostname, up.port, up.path.rstrip("/")  # ".../v1"
        self.plan = plan
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()   # arrivals per request key
        self.answered: Counter[str] = Counter()   # forwarded to the server and answered there
        self.injected: Counter[str] = Counter()   # faults injected, by kind
        self.headers: list[dict[str, str]] = []
        self.arrivals = 0
        self.kill: tuple[int, int] | None = None  # (arrival number, process group) to kill -9 at
        self.killed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._forward(b"", "GET")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                key = body_key(body)
                with proxy.lock:
                    proxy.arrivals += 1
                    n = proxy.arrivals
                    attempt = proxy.attempts[key]
                    proxy.attempts[key] += 1
                    proxy.headers.append(dict(self.headers))
                    kill = proxy.kill
                if kill and n == kill[0]:
                    os.killpg(kill[1], signal.SIGKILL)
                    proxy.killed.set()
                    self.close_connection = True
                    return  # never forwarded: the server does not see it
                fault = proxy.plan(key, attempt) if proxy.plan else None
                if fault and fault.startswith("slow:"):
                    with proxy.lock:
                        proxy.injected["slow"] += 1
                    time.sleep(float(fault.split(":")[1]))  # then forward: the client has given up
                    fault = None
                if fault:
                    with proxy.lock:
                        proxy.injected[fault] += 1
                    if fault == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    msg = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                status = self._forward(body, "POST")
                if status == 200:
                    with proxy.lock:
                        proxy.answered[key] += 1

            def _forward(self, body: bytes, method: str) -> int:
                path = self.path if self.path.startswith(proxy.up_prefix) else proxy.up_prefix + self.path
                conn = http.client.HTTPConnection(proxy.up_host, proxy.up_port, timeout=120)
                try:
                    conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return resp.status

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a killed client: expected here
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def kill_at(self, arrival_in_this_run: int, pgid: int) -> None:
        """kill -9 the process group `pgid` when the `arrival_in_this_run`-th
        request from now arrives (that request is not forwarded)."""
        with self.lock:
            self.kill = (self.arrivals + arrival_in_this_run, pgid)
            self.killed.clear()

    def __enter__(self) -> "TeacherProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
