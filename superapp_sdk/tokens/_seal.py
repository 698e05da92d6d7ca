"""Encryption at rest for tokens and billing keys (AES-256-GCM).

The key lives in ``<state_dir>/keys/seal.key`` (0600, in a 0700 directory), created on
first use from the OS's CSPRNG. Every sealed value is bound to its purpose with
associated data (``"session:<id>"``, ``"billing:<user>:<provider>"``), so a ciphertext
copied to another record does not decrypt there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from superapp_sdk._errors import StoreError

__all__ = ["Sealer"]

_VERSION = b"\x01"
_NONCE = 12


logger = logging.getLogger("superapp_sdk.tokens")


def _make_private(path: Path, mode: int) -> None:
    """Give ``path`` exactly ``mode`` when others could reach it, and say so: a key that
    was readable by others may have been read, which an operator must know (the key
    itself is never logged). Same rule as the state directory's files."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current == mode:
        return
    os.chmod(path, mode)
    if current & 0o077:
        logger.warning(
            "%s was mode %o, readable or writable by other users; fixed to %o. If others"
            " could read it, rotate the sealing key.",
            path,
            current,
            mode,
        )


class Sealer:
    """Seals and opens small secrets with a key kept beside the state."""

    __slots__ = ("_aead", "path")

    def __init__(self, key_path: str | os.PathLike[str]) -> None:
        self.path = Path(key_path)
        self._aead = AESGCM(self._load_or_create())

    def _load_or_create(self) -> bytes:
        path = self.path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path.parent, 0o700)
            if path.exists():
                _make_private(path, 0o600)
            else:
                # Written to a private temporary file, then linked into place: a process
                # starting at the same moment sees either no key or the whole key, and
                # os.link refuses to replace a key another process put there first.
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(AESGCM.generate_key(bit_length=256))
                        f.flush()
                        os.fsync(f.fileno())
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            key = path.read_bytes()
        except OSError as exc:
            raise StoreError(
                f"cannot read or create the sealing key {path}: {exc}", path=str(path)
            ) from exc
        if len(key) != 32:
            raise StoreError(
                f"sealing key {path} is {len(key)} bytes, expected 32 (corrupted?)", path=str(path)
            )
        return key

    def seal(self, plaintext: bytes, *, purpose: str) -> bytes:
        """Encrypt ``plaintext`` for ``purpose``."""
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def open(self, sealed: bytes, *, purpose: str) -> bytes:
        """Decrypt what :meth:`seal` made for the same ``purpose``.

        Raises:
            StoreError: the value was tampered with, truncated, or sealed for another
                purpose or with another key.
        """
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise StoreError(f"sealed value for {purpose!r} is truncated or of an unknown format")
        try:
            return self._aead.decrypt(
                sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], purpose.encode()
            )
        except InvalidTag as exc:
            raise StoreError(
                f"sealed value for {purpose!r} failed authentication (tampered, or another key)"
            ) from exc

    def __repr__(self) -> str:
        return f"Sealer({str(self.path)!r})"
