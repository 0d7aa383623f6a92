"""A service container's server for the rolling-deploy tests: `python instance_app.py NAME PORT`.

It answers every request on 127.0.0.1:PORT with {"name": NAME} and, like a well-behaved
server, finishes the requests it has when SIGTERM comes (`register -- CMD` passes it on).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # The response leaves in one write, as servers send a small response: a SIGKILL then
    # lands before it (nginx retries the request at another instance) or after it (the
    # answer is whole). Unbuffered, headers and body went in two writes, and a kill between
    # them cut off a response nginx had begun to pass on, which no proxy can retry.
    wbufsize = 64 * 1024

    def do_GET(self) -> None:
        body = json.dumps({"name": self.server.name}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    name = ""


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    server = _Server(("127.0.0.1", port), _Handler)
    server.name = name
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
