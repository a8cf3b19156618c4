"""The README's "Testing a Server end to end" example, verbatim (keep the two in sync).

The README block is this file from ``import http.client`` on: a WSGI app served by a
`greentask.tasks.Server` in a real `TaskManager`, reached through ``http.client`` on a
gevent socket (a blocking stdlib client would stop the hub, and the server with it).
"""

import http.client

import gevent.socket
from gevent.pywsgi import WSGIServer

import greentask as gt
from greentask.testing import start_manager


def hello_app(environ, start_response):
    body = b"hello " + environ["PATH_INFO"][1:].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class GeventHTTPConnection(http.client.HTTPConnection):
    """http.client over a gevent socket: while it waits for the answer, the server runs."""

    def connect(self):
        self.sock = gevent.socket.create_connection((self.host, self.port), self.timeout)


def test_the_http_server_answers_and_stops_cleanly():
    http = gt.tasks.Server(WSGIServer(("127.0.0.1", 0), hello_app, log=None))  # port 0: any free port
    manager = gt.TaskManager(stop_timeout=5)
    manager.add_task("http", http)
    with start_manager(manager) as running:
        running.wait_running(timeout=5)  # initialize has bound the port: http.address is known
        conn = GeventHTTPConnection(*http.address, timeout=5)
        conn.request("GET", "/world")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello world")
        conn.request("GET", "/again")  # the same keep-alive connection
        assert conn.getresponse().read() == b"hello again"
        running.stop()  # the idle keep-alive connection does not hold the shutdown
        assert running.wait(timeout=5) == []
        conn.close()


if __name__ == "__main__":
    test_the_http_server_answers_and_stops_cleanly()
    print("ok")
