"""A service task for tests and demos: says which task answered.

HTTP on port 80: GET answers the task's container name (from
VXNET_CONTAINER_NAME, which vxnet-control sets) on the first line and
`client=IP:PORT`, the address the connection came from, on the second.
TCP port 7000: greets with the name, then echoes what it receives.
UDP port 7000: answers every datagram with the name, `client=IP:PORT`
(one line each) and the datagram.

Listens on IPv6 and IPv4 where the namespace has IPv6, else IPv4 only.
"""
import http.server
import os
import socket
import socketserver
import threading

NAME = os.environ.get("VXNET_CONTAINER_NAME") or socket.gethostname()


def family():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::", 0))
        s.close()
        return socket.AF_INET6
    except OSError:
        return socket.AF_INET


FAMILY = family()
ANY = "::" if FAMILY == socket.AF_INET6 else "0.0.0.0"


class Dual:
    address_family = FAMILY
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        if FAMILY == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HttpServer(Dual, http.server.ThreadingHTTPServer):
    pass


class TcpServer(Dual, socketserver.ThreadingTCPServer):
    pass


class UdpServer(Dual, socketserver.ThreadingUDPServer):
    pass


def client(addr):
    """`IP:PORT` of a peer, IPv4-mapped IPv6 addresses shown as IPv4."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    return f"{host}:{port}"


class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (NAME + "\nclient=" + client(self.client_address) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((NAME + "\n").encode())
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        head = NAME + "\nclient=" + client(self.client_address) + "\n"
        sock.sendto(head.encode() + data, self.client_address)


servers = [HttpServer((ANY, 80), Who), TcpServer((ANY, 7000), Echo), UdpServer((ANY, 7000), UdpEcho)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print(f"{NAME}: http on 80, echo on tcp and udp 7000", flush=True)
servers[0].serve_forever()
