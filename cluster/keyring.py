"""AES-GCM keyring for gossip: the first key encrypts, every key is tried to decrypt.

Keys are base64 of 16, 24 or 32 random bytes (`openssl rand -base64 32`).
Rotation: add the new key to every host's key file (second line), then
move it first, then remove the old one - at every step all hosts can read
what any host sends.

Frame: version byte 2 | 12-byte random nonce | ciphertext + 16-byte tag.
(Version 2: the plaintext carries an anti-replay stamp, see replay.py.)

Live rotation: `Keyring.replace()` swaps the keys in place (SIGHUP or
`pyoverlay keys reload` re-read --gossip-key-file).  A key file must not be
readable by group or others: it is refused otherwise.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyoverlay.core.errors import InvalidOption

VERSION = 2
NONCE = 12
OVERHEAD = 1 + NONCE + 16
AAD = b"pyoverlay-gossip-2"


class AuthError(Exception):
    """A frame no key of the ring can open (wrong key, tampered, truncated)."""


def parse_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOption(
            f"{where}: not base64; make a key with `openssl rand -base64 32`"
        ) from None
    if len(raw) not in (16, 24, 32):
        raise InvalidOption(
            f"{where}: a key is 16, 24 or 32 bytes, this one is {len(raw)}; "
            "make one with `openssl rand -base64 32`"
        )
    return raw


def load_keys(key: str | None, key_file: str | None) -> list[bytes]:
    """--gossip-key KEY and/or --gossip-key-file FILE (one key per line, first sends)."""
    keys: list[bytes] = []
    if key:
        keys.append(parse_key(key, "--gossip-key"))
    if key_file:
        try:
            mode = Path(key_file).stat().st_mode
            if mode & 0o077:
                raise InvalidOption(
                    f"--gossip-key-file {key_file} is readable by group or others "
                    f"(mode {mode & 0o777:o}); run `chmod 600 {key_file}`"
                )
            lines = Path(key_file).read_text().splitlines()
        except OSError as exc:
            raise InvalidOption(f"--gossip-key-file {key_file}: {exc.strerror}") from None
        for i, line in enumerate(lines, 1):
            if line.strip() and not line.strip().startswith("#"):
                keys.append(parse_key(line, f"--gossip-key-file {key_file} line {i}"))
        if not keys:
            raise InvalidOption(f"--gossip-key-file {key_file} holds no key")
    return keys


class Keyring:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._ciphers = [AESGCM(k) for k in keys]
        self.keys: list[bytes] = list(keys)  # the raw keys (IPsec keys are derived from them)

    def replace(self, keys: Sequence[bytes]) -> None:
        """Swap the keys (live rotation): the first one sends from now on."""
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._ciphers = [AESGCM(k) for k in keys]
        self.keys = list(keys)

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return bytes([VERSION]) + nonce + self._ciphers[0].encrypt(nonce, plaintext, AAD)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < OVERHEAD or frame[0] != VERSION:
            raise AuthError("not a pyoverlay gossip frame")
        nonce, body = frame[1 : 1 + NONCE], frame[1 + NONCE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, AAD)
            except InvalidTag:
                continue
        raise AuthError("no key opens this frame")
