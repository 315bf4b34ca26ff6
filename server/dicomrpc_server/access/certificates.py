"""Client certificates: the subject that names a caller authenticated by mutual TLS."""

from __future__ import annotations

import functools

from cryptography import x509


@functools.lru_cache(maxsize=256)
def subject_of(certificate: bytes) -> str:
    """The RFC 4514 subject (``CN=ingest,O=Hospital``) of a PEM or DER certificate.

    Both adapters name a certificate's holder with this one function, so a caller has the same
    identity over gRPC and HTTP. A connection's certificate is parsed once, not once per call.
    """
    if certificate.lstrip().startswith(b"-----BEGIN"):
        parsed = x509.load_pem_x509_certificate(certificate)
    else:
        parsed = x509.load_der_x509_certificate(certificate)
    return parsed.subject.rfc4514_string()
