"""The TLS context the proxy verifies its targets with, built cheaply.

httpx makes its TLS context when a client is built, and loading the CA bundle into it is most of that
client's construction (about 90 ms of CPU, measured by ``bench/coldstart.py``), paid by the first
request whether or not any target speaks https. This context is the one httpx would make (the same
CA bundle, verification mode and flags) but loads the bundle on its first TLS connection: a gateway
whose targets are plain http (local mode, a sidecar model server) never loads it, and one that calls
https targets loads it when it opens its first connection (anyio calls ``wrap_bio`` of a context
that is not a plain ``ssl.SSLContext`` in a worker thread, off the event loop).
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from typing import Any

# The CA sources httpx reads when it is told to verify (trust_env): a file, a directory, else certifi's.
CA_FILE_VARIABLE = "SSL_CERT_FILE"
CA_DIRECTORY_VARIABLE = "SSL_CERT_DIR"


class CaBundleOnFirstUse(ssl.SSLContext):
    """A verifying client context that loads its CA locations when it first wraps a connection."""

    _cafile: str | None
    _capath: str | None
    _loaded: bool
    _load_lock: threading.Lock

    def __new__(cls, cafile: str | None = None, capath: str | None = None) -> CaBundleOnFirstUse:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname on
        context._cafile, context._capath = cafile, capath
        context._loaded = False
        context._load_lock = threading.Lock()
        if sys.version_info >= (3, 13):  # what ssl.create_default_context adds since 3.13
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        return context

    def __init__(self, cafile: str | None = None, capath: str | None = None) -> None:
        super().__init__()

    def load_ca(self) -> None:
        """Load the CA locations (once; later calls return at once)."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self.load_verify_locations(cafile=self._cafile, capath=self._capath)
                self._loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_ca()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_ca()
        return super().wrap_socket(*args, **kwargs)


def upstream_tls_context() -> CaBundleOnFirstUse:
    """The context httpx's ``verify=True`` would build, from the same CA source, loaded on first use."""
    if os.environ.get(CA_FILE_VARIABLE):
        return CaBundleOnFirstUse(cafile=os.environ[CA_FILE_VARIABLE])
    if os.environ.get(CA_DIRECTORY_VARIABLE):
        return CaBundleOnFirstUse(capath=os.environ[CA_DIRECTORY_VARIABLE])
    import certifi

    return CaBundleOnFirstUse(cafile=certifi.where())
