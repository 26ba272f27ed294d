# -*- test-case-name: tests.test_tls_files -*-
"""
The files a C{geckotls:} description names, as bytes, and the TLS
configuration Twisted's C{ssl:} builds, built from those bytes.

Why bytes: under C{twistd -u/-g} a cluster primary parses the description
while still privileged, so it can read a private key only root may read
(as ACME clients leave them); its workers run as the dropped user and
cannot.  The primary keeps the bytes it read (L{HandOver}) and sends them
in each worker's start-up message; the worker builds its configuration
from them (L{TLSFiles} with C{handedOver}) instead of the disk.  One
function (L{certificateOptions}) builds the configuration in both cases,
step for step as C{ssl:} does, so swapping C{ssl:} for C{geckotls:}
changes nothing, with or without workers.

The bytes are never written anywhere: not to a file, the command line or
the environment; they exist in the primary's memory and on the channel to
each worker.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.filepath import FilePath

__all__ = ["TLSFiles", "UnreadableFile", "HandOver", "certificateOptions", "startupFiles", "checkFits", "receive", "handedOver"]

_log = Logger()


class UnreadableFile(ValueError):
    """
    A file an option names cannot be read: one line naming the option, the
    file and why.

    @ivar denied: whether the reason is a permission (the process's user
        may not read it).
    """

    def __init__(self, option: str, path: str, error: OSError) -> None:
        super().__init__(f"{option}: cannot read {path!r}: {error.strerror or error}")
        self.denied = error.errno in (errno.EACCES, errno.EPERM)


class TLSFiles:
    """
    Where a TLS configuration's files come from: the bytes handed over for
    them, when there are some, else the disk.  Every file read is kept in
    L{held} (what a primary hands to its workers).

    @ivar handedOver: path as written in the description -> its bytes, as
        a cluster worker's primary read them; or C{None}.
    @ivar held: path -> the bytes read for it, in this reading.
    """

    def __init__(self, handedOver: Mapping[str, bytes] | None = None) -> None:
        self.handedOver = handedOver
        self.held: dict[str, bytes] = {}

    def read(self, option: str, path: str) -> bytes:
        """
        The bytes of C{path} (named by C{option}).

        @raise UnreadableFile: neither handed over nor readable.
        """
        if self.handedOver is not None and path in self.handedOver:
            data = self.handedOver[path]
        else:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise UnreadableFile(option, path, e) from None
        self.held[path] = data
        return data

    def names(self, option: str, directory: str) -> list[str]:
        """
        The C{.pem} files of C{directory}, sorted: those handed over in it
        when some were (its listing may be as unreadable as its files),
        else its listing.

        @raise ValueError: one line, for a directory that cannot be listed.
        """
        if self.handedOver is not None:
            inside = os.path.join(directory, "")
            found = sorted(
                p[len(inside) :] for p in self.handedOver if p.startswith(inside) and p.endswith(".pem") and os.sep not in p[len(inside) :]
            )
            if found:
                return found
        try:
            return sorted(n for n in os.listdir(directory) if n.endswith(".pem"))
        except OSError as e:
            raise ValueError(f"{option}: cannot read {directory!r}: {e.strerror or e}") from None


_CHAIN = re.compile(r"(-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----)", re.DOTALL)


def certificateOptions(
    keyPEM: bytes,
    certPEM: bytes,
    sslmethod: str | None = None,
    chainPEM: bytes | None = None,
    chainPath: str = "",
    dhParameters: str | None = None,
) -> Any:
    """
    The C{CertificateOptions} Twisted's C{ssl:} makes of its options, from
    the files' bytes: C{twisted.internet.endpoints}' own reading of
    C{privateKey}, C{certKey}, C{sslmethod}, C{extraCertChain} and
    C{dhParameters}, step for step, with the bytes in place of the files.

    @param dhParameters: a path, as for C{ssl:}: Diffie-Hellman parameters
        are public, and OpenSSL loads them from a path only, when the
        context is made.
    @raise AttributeError: an unknown C{sslmethod}.
    @raise ValueError: a chain file without a certificate.
    @raise Exception: what OpenSSL raised for keys and certificates it
        cannot use.
    """
    from OpenSSL import SSL
    from twisted.internet import ssl

    kw: dict[str, Any] = {}
    if sslmethod is not None:
        kw["method"] = getattr(SSL, sslmethod)
    privateCertificate = ssl.PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM)
    chain = None
    if chainPEM is not None:
        chain = [ssl.Certificate.loadPEM(pem).original for pem in _CHAIN.findall(chainPEM.decode("ascii"))]
        if not chain:
            raise ValueError(f"Specified chain file '{chainPath}' doesn't contain any valid certificates in PEM format.")
    dh = ssl.DiffieHellmanParameters.fromFile(FilePath(dhParameters)) if dhParameters is not None else None
    return ssl.CertificateOptions(
        privateKey=privateCertificate.privateKey.original,
        certificate=privateCertificate.original,
        extraCertChain=chain,
        dhParameters=dh,
        **kw,
    )


class HandOver:
    """
    What a cluster primary keeps of one TLS listener's files for its
    workers: the bytes it read when the description was parsed (while
    still privileged), until the listener closes, or until a reload reads
    them again (L{refresh}).

    @param description: the listener's description, for the log.
    @param read: reads the configuration again from a L{TLSFiles}.
    @param files: the reading made when the description was parsed.
    """

    def __init__(self, description: str, read: Callable[[TLSFiles], object], files: TLSFiles) -> None:
        self._description = description
        self._read = read
        self._files = files

    def files(self) -> dict[str, bytes]:
        """Path as written -> bytes: what each new worker gets."""
        return dict(self._files.held)

    def restore(self, files: Mapping[str, bytes]) -> None:
        """Hand over C{files} again (what L{files} returned before a renewal that cannot be used)."""
        kept = TLSFiles()
        kept.held.update(files)
        self._files = kept

    def refresh(self) -> bool:
        """
        Read the files again (a reload: the workers it starts get renewed
        certificates).  A reading that fails (a file this process may no
        longer read, a key that does not match) is one log line, and the
        workers get the bytes read before.

        @return: whether the files were read again.
        """
        fresh = TLSFiles()
        try:
            self._read(fresh)
        except ValueError as e:
            hint = ""
            if isinstance(e, UnreadableFile) and e.denied and os.geteuid() != 0:
                hint = (
                    "; this process read it before it dropped its privileges (twistd -u/-g) and cannot "
                    "read it again: restart the service to serve renewed files only root may read"
                )
            _log.error(
                "{description}: new workers get the TLS files read before ({error}){hint}",
                description=self._description,
                error=e,
                hint=hint,
            )
            return False
        self._files = fresh
        return True


def startupFiles(handOvers: Mapping[str, HandOver], refresh: bool, limit: int) -> dict[str, dict[str, str]]:
    """
    A worker's start-up message's C{files}: each listener's files
    (description -> path -> base64), read again first if C{refresh} (the
    first worker of a reload).  A renewal that would not fit in C{limit}
    bytes (more C{sniDir} hosts since the listener listened) is one log
    line, and the workers get the files read before.
    """
    before = {d: h.files() for d, h in handOvers.items()}
    if refresh:
        for handOver in handOvers.values():
            handOver.refresh()
    files = _encoded(handOvers)
    size = len(json.dumps(files))
    if refresh and size > limit:
        for d, h in handOvers.items():
            h.restore(before[d])
        _log.error(
            "New workers get the TLS files read before: the renewed ones take {size} bytes in a worker's "
            "start-up message, which has room for {limit} (fewer sniDir hosts, or EC keys)",
            size=size,
            limit=limit,
        )
        files = _encoded(handOvers)
    return files


def _encoded(handOvers: Mapping[str, HandOver]) -> dict[str, dict[str, str]]:
    return {d: {path: base64.b64encode(data).decode("ascii") for path, data in h.files().items()} for d, h in handOvers.items()}


def checkFits(handOvers: Mapping[str, HandOver], limit: int) -> None:
    """
    Whether the start-up message's C{files} for these listeners stay
    within C{limit} bytes (what the message holds beside its other
    fields).

    @raise ValueError: one line saying how large they are and what to do.
    """
    size = len(json.dumps(_encoded(handOvers)))
    if size > limit:
        raise ValueError(
            f"the TLS files of the listeners take {size} bytes in each worker's start-up message, which has room "
            f"for {limit}: fewer sniDir hosts (or EC keys, which are smaller)"
        )


#: The files this process's parent handed over (a worker's start-up
#: message's C{files}: description -> path -> base64).
_received: dict[str, dict[str, str]] = {}


def receive(files: Mapping[str, dict[str, str]]) -> None:
    """
    This process is a worker whose parent read these TLS files for it
    (its start-up message's C{files}, checked): the TLS endpoints it
    parses take their files from them (L{handedOver}).
    """
    _received.clear()
    _received.update(files)


def handedOver(description: str) -> dict[str, bytes] | None:
    """
    The files handed over for the listener C{description} (path as
    written -> bytes), or C{None}: read the disk.
    """
    files = _received.get(description)
    return None if files is None else {path: base64.b64decode(data) for path, data in files.items()}
