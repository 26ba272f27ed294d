"""
The TLS files as bytes: the configuration built from them is what Twisted's
C{ssl:} builds from the same files; a cluster worker builds it from the
bytes its primary handed over, whatever the disk says; a primary that
cannot read the files again for a reload says so in one line and keeps
what it read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from twisted_serversock._tlsfiles import (
    HandOver,
    TLSFiles,
    UnreadableFile,
    certificateOptions,
    startupFiles,
)
from twisted_serversock._twistedcompat import sslServerOptions
from twisted_serversock.tlsendpoints import _contextFactory

from ._tlshelp import Certs, certs

__all__ = ["certs"]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _same(ours: Any, twisted: Any) -> None:
    assert ours.certificate.to_cryptography() == twisted.certificate.to_cryptography()
    assert ours.privateKey.to_cryptography_key().private_numbers() == twisted.privateKey.to_cryptography_key().private_numbers()
    assert [c.to_cryptography() for c in ours.extraCertChain or []] == [c.to_cryptography() for c in twisted.extraCertChain or []]
    assert ours.method == twisted.method
    assert (ours.dhParameters is None) == (twisted.dhParameters is None)


@pytest.mark.parametrize("together", [True, False])
def test_bytesBuildWhatSslBuilds(certs: Certs, together: bool) -> None:
    """
    From the files' bytes, the same C{CertificateOptions} as Twisted's own
    C{ssl:} reading of the files: certificate, key, chain, method.
    """
    if together:
        options = {"privateKey": certs["server.pem"], "extraCertChain": certs["ca.pem"], "sslmethod": "TLS_METHOD"}
        ours = certificateOptions(_read(certs["server.pem"]), _read(certs["server.pem"]), "TLS_METHOD", _read(certs["ca.pem"]))
    else:
        options = {"privateKey": certs["key.pem"], "certKey": certs["cert.pem"]}
        ours = certificateOptions(_read(certs["key.pem"]), _read(certs["cert.pem"]))
    _same(ours, sslServerOptions(**options))


def test_chainWithoutCertificateFailsAsSsl(certs: Certs) -> None:
    with pytest.raises(ValueError, match="Specified chain file 'c.pem' doesn't contain any valid certificates"):
        certificateOptions(_read(certs["server.pem"]), _read(certs["server.pem"]), None, b"nothing", "c.pem")


def test_handedOverBytesWinOverTheDisk(certs: Certs) -> None:
    """
    A worker's files come from what was handed over, for every option
    (key, certificate, chain, SNI directory, client CA), even where the
    disk has nothing; the others from the disk.
    """
    d = tempfile.mkdtemp()
    try:
        gone = os.path.join(d, "gone")
        handedOver = {
            f"{gone}/key.pem": _read(certs["key.pem"]),
            f"{gone}/cert.pem": _read(certs["cert.pem"]),
            f"{gone}/chain.pem": _read(certs["ca.pem"]),
            f"{gone}/sni/other.pem": _read(certs["other.pem"]) + _read(certs["otherkey.pem"]),
            f"{gone}/ca.pem": _read(certs["ca.pem"]),
        }
        files = TLSFiles(handedOver)
        options = _contextFactory(
            files, f"{gone}/key.pem", f"{gone}/cert.pem", None, f"{gone}/chain.pem", None,
            f"{gone}/sni", "request", f"{gone}/ca.pem",
        )  # fmt: skip
        _same(options, sslServerOptions(privateKey=certs["key.pem"], certKey=certs["cert.pem"], extraCertChain=certs["ca.pem"]))
        assert files.held == handedOver
        # Not handed over: the disk.
        shutil.copy(certs["server.pem"], os.path.join(d, "server.pem"))
        assert TLSFiles({}).read("privateKey", os.path.join(d, "server.pem")) == _read(certs["server.pem"])
        with pytest.raises(UnreadableFile, match=f"privateKey: cannot read '{gone}/key.pem': No such file"):
            TLSFiles({}).read("privateKey", f"{gone}/key.pem")
    finally:
        shutil.rmtree(d)


def _keyHandedOver(certs: Certs, directory: str) -> tuple[str, HandOver]:
    """
    A copy of the server's key and certificate in C{directory}, and the
    L{HandOver} of the listener C{geckotls:0:privateKey=K} that read it.
    """
    key = os.path.join(directory, "server.pem")
    shutil.copy(certs["server.pem"], key)
    first = TLSFiles()
    _contextFactory(first, key)
    return key, HandOver("geckotls:0:privateKey=K", lambda fresh: _contextFactory(fresh, key), first)


def test_refreshThatFailsKeepsWhatWasRead(certs: Certs) -> None:
    """
    A reload's reading that fails is one error line naming the listener
    and the problem; new workers get the bytes read before.
    """
    d = tempfile.mkdtemp()
    events: list[dict[str, Any]] = []
    try:
        key, handOver = _keyHandedOver(certs, d)
        assert handOver.files() == {key: _read(certs["server.pem"])}
        with open(key, "wb") as f:
            f.write(b"not a key\n")
        globalLogPublisher.addObserver(events.append)
        try:
            assert handOver.refresh() is False
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert handOver.files() == {key: _read(certs["server.pem"])}
        [event] = [e for e in events if e.get("log_namespace") == "twisted_serversock._tlsfiles"]
        assert event["description"] == "geckotls:0:privateKey=K" and "not a usable PEM certificate" in str(event["error"])
        shutil.copy(certs["other.pem"], key)
        with open(key, "ab") as f:
            f.write(_read(certs["otherkey.pem"]))
        assert handOver.refresh() is True
        assert handOver.files() == {key: _read(key)}
    finally:
        shutil.rmtree(d)


def test_renewalTooLargeForTheStartupMessageKeepsWhatWasRead(certs: Certs) -> None:
    """
    A reload whose renewed files would not fit in a worker's start-up
    message (the certificate file grew) is one error line, and new workers
    get the files read before, not a start-up message that cannot be sent.
    """
    d = tempfile.mkdtemp()
    events: list[dict[str, Any]] = []
    try:
        key, handOver = _keyHandedOver(certs, d)
        handOvers = {"geckotls:0:privateKey=K": handOver}
        limit = len(str(startupFiles(handOvers, False, 10**6))) + 100
        with open(key, "ab") as f:
            f.write(b"# padding that makes the renewal too large\n" * 200)
        globalLogPublisher.addObserver(events.append)
        try:
            files = startupFiles(handOvers, True, limit)
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert files == startupFiles(handOvers, False, limit)
        assert handOvers["geckotls:0:privateKey=K"].files() == {key: _read(certs["server.pem"])}
        [event] = [e for e in events if e.get("log_namespace") == "twisted_serversock._tlsfiles"]
        assert event["limit"] == limit and event["size"] > limit
    finally:
        shutil.rmtree(d)
