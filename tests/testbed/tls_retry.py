"""HTTPS calls for leakmon's root tests (tests/root/calls_early.rs): one
retried on a new TLS connection after a read timeout, as urllib3 retries,
and calls on one kept-alive connection, as nova-compute's pool makes them.
Speaks the workload's line protocol: JSON events on stdout, commands on
stdin.

    tls_retry.py server CERT KEY [all]  says {"event": "listening", "port": N};
                                        its first connection never answers
                                        (unless `all`)
    tls_retry.py client PORT CA         says {"event": "ready"}, and after a
                                        `go` line calls, times out, calls again
                                        on a new connection and says
                                        {"event": "called"}
    tls_retry.py pooled PORT CA         calls once, says {"event": "ready"},
                                        then for each `go` line calls on the
                                        same connection and says
                                        {"event": "called", "status": N};
                                        `write` sends a request alone and
                                        says {"event": "written"}, `read`
                                        reads its answer and says
                                        {"event": "read", "status": N}
"""

import http.client
import json
import socket
import ssl
import sys
import threading
import time

PATH = "/v1/nodes/5d8f0b6a-3c1e-4a2b-9c7d-1e2f3a4b5c6d"


def say(**event):
    print(json.dumps(event), flush=True)


def serve(cert, key, answer_all):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    say(event="listening", port=listener.getsockname()[1])

    def answer(conn, first):
        with context.wrap_socket(conn, server_side=True) as tls:
            while tls.recv(65536):
                if first:
                    time.sleep(30)
                    return
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    first = not answer_all
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn, first), daemon=True).start()
        first = False


def call(port, context, timeout):
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        conn.request("GET", PATH)
        return conn.getresponse().status
    except TimeoutError:
        return None
    finally:
        conn.close()


def client(port, cafile):
    context = ssl.create_default_context(cafile=cafile)
    say(event="ready")
    sys.stdin.readline()
    statuses = [call(port, context, 0.5), call(port, context, 10)]
    say(event="called", statuses=statuses)
    sys.stdin.readline()


def pooled(port, cafile):
    context = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)

    def call():
        conn.request("GET", PATH)
        response = conn.getresponse()
        response.read()
        return response.status

    call()
    say(event="ready")
    for line in sys.stdin:
        if line.strip() == "write":
            conn.request("GET", PATH)
            say(event="written")
        elif line.strip() == "read":
            response = conn.getresponse()
            response.read()
            say(event="read", status=response.status)
        else:
            say(event="called", status=call())


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3], sys.argv[4:] == ["all"])
    elif sys.argv[1] == "pooled":
        pooled(int(sys.argv[2]), sys.argv[3])
    else:
        client(int(sys.argv[2]), sys.argv[3])
