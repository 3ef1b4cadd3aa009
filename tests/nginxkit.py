"""A real nginx (Debian's package) serving a folder of blobs over HTTPS on loopback,
for the mirror tests and `benchmarks/transfer.py`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.tls import cert_pem, key_pem, new_tls_key

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
CONF = """
{user}
worker_processes 1;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        location /blobs/ {{
            alias {blobs}/;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxMirror:
    """``with NginxMirror(root, blobs) as m:`` serves ``blobs`` at ``m.url`` (CA: ``m.ca_file``)."""

    def __init__(self, root: Path, blobs: Path) -> None:
        if NGINX is None:
            raise RuntimeError("nginx is not installed")
        self.root, self.blobs = root, blobs
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}/blobs/"
        self.ca_file = root / "ca.pem"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxMirror:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create("mirror-test")
        key = new_tls_key()
        (self.root / "cert.pem").write_bytes(cert_pem(ca.issue_server(key, ["127.0.0.1"])))
        (self.root / "key.pem").write_bytes(key_pem(key))
        self.ca_file.write_bytes(cert_pem(ca.cert))
        # As root, nginx's workers would drop to an account that cannot read our folders.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(CONF.format(user=user, root=self.root, port=self.port, blobs=self.blobs))
        assert NGINX is not None
        self._process = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self._process.poll() is not None:
                raise RuntimeError((self.root / "error.log").read_text()[-2000:])
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    @property
    def pid(self) -> int:
        """The master process (its worker is its child)."""
        assert self._process is not None
        return self._process.pid

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
