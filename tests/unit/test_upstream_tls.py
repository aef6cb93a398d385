"""The proxy's upstream TLS context verifies exactly as httpx's own would (same CA bundle, mode, flags),
but loads the bundle on its first TLS connection, not when the client is built (cold start)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from typing import TYPE_CHECKING

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quotagate.upstream_tls import CA_DIRECTORY_VARIABLE, CA_FILE_VARIABLE, upstream_tls_context

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

VERIFICATION_SETTINGS = ("protocol", "verify_mode", "check_hostname", "verify_flags", "options", "minimum_version")


@pytest.fixture(autouse=True)
def no_ca_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CA_FILE_VARIABLE, raising=False)
    monkeypatch.delenv(CA_DIRECTORY_VARIABLE, raising=False)


def test_it_is_httpx_s_verifying_context_with_the_bundle_loaded_on_first_use():
    context, httpx_own = upstream_tls_context(), httpx.create_ssl_context()
    assert {name: getattr(context, name) for name in VERIFICATION_SETTINGS} == {
        name: getattr(httpx_own, name) for name in VERIFICATION_SETTINGS
    }
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0  # nothing loaded yet
    context.load_ca()
    assert context.get_ca_certs() == httpx_own.get_ca_certs()
    assert context.cert_store_stats()["x509_ca"] > 100


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server on loopback with a self-signed certificate: answers every request ``ok``."""
    cert_file, key_file = self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/", cert_file
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=upstream_tls_context(), timeout=5) as client:
        return await client.get(url)


def test_a_certificate_outside_the_bundle_is_refused(tls_server):
    url, _ = tls_server
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(get(url))


def test_the_ca_file_httpx_reads_from_the_environment_is_the_one_trusted(tls_server, monkeypatch):
    url, cert_file = tls_server
    monkeypatch.setenv(CA_FILE_VARIABLE, str(cert_file))
    response = asyncio.run(get(url))
    assert (response.status_code, response.text) == (200, "ok")
