# Allowed egress inside a sandbox: the address of a private endpoint on the sandbox's own loopback,
# joined to the worker's forwarder socket. Shared by the scorer driver and environment builds.
import os


def open_egress(host, port, sock_path):
    """Makes an allowed private endpoint reachable at its own address inside the sandbox.

    The address is given to the sandbox's loopback, and a forwarder joins each connection to it to the
    worker's socket for that endpoint; the worker connects to the real endpoint and to nothing else.
    """
    import socket
    import subprocess
    import threading

    ip = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
    if not host.startswith("127."):
        subprocess.run([ip, "addr", "add", f"{host}/32", "dev", "lo"], capture_output=True)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(64)

    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve():
        while True:
            client, _ = server.accept()
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(sock_path)
            except OSError:
                client.close()
                continue
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


