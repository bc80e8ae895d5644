"""The node's pseudonymisation keys. AES-SIV (RFC 5297, from `cryptography`) is deterministic authenticated
encryption: the same SSIN always gives the same pseudonym, so search and uniqueness work on stored
pseudonyms, and only the holder of the key can turn one back.

A key file holds one key per line, `<kid> <base64 key>`, newest first. Writes use the first; reads and
searches accept every one, so a rotation (`fhir-node keygen --rotate`, then `fhir-node rekey`) never leaves
data unreadable, and AuditEvents (which the hash chain forbids rewriting) keep the key they were written
under. A pseudonym names its key: `<kid>.<base64url of the SIV output>`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from sqlalchemy.engine import make_url

from fhir_node.settings import Settings

_LINE = re.compile(r"([0-9a-f]{8}) ([A-Za-z0-9+/]{86}==)")
_TOKEN = re.compile(r"([0-9a-f]{8})\.([A-Za-z0-9_-]{22,})")
#: The context of the SSINs the node stores; a recipient's pseudonyms have their own (`recipient`).
STORED = b"stored"
#: Beside the SQLite file, for a local development node (FHIR_NODE_AUTH=none).
LOCAL_SUFFIX = ".pseudonym-key"


class KeyProblem(Exception):
    """The node cannot pseudonymise: what is missing or wrong, for the operator."""


class Keyring:
    """The keys of one key file, newest first."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._keys = {kid: AESSIV(key) for kid, key in keys}
        self.current = keys[0][0]
        #: `clear` under the current key, cached: the same SSINs come back request after request.
        self.seal = lru_cache(maxsize=65536)(lambda clear, context: self._under(self.current, clear, context))
        #: The clear value of a pseudonym made by one of these keys for `context`, else None; cached too.
        self.open = lru_cache(maxsize=65536)(self._open)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise KeyProblem(f"cannot read the pseudonym key file {path}: {exc.strerror}") from None
        found = [_LINE.fullmatch(line) for line in lines]
        if not found or not all(found):
            raise KeyProblem(f"{path} is not a pseudonym key file (write one with `fhir-node keygen PATH`)")
        return cls([(m.group(1), base64.b64decode(m.group(2))) for m in found if m])

    @classmethod
    def ephemeral(cls) -> Keyring:
        """For an in-memory database: the data dies with the process, and so does its key."""
        return cls([_parse(new_key_line())])

    def seals(self, clear: str, context: bytes) -> list[str]:
        """`clear` under every key (what a search by it must match, mid-rotation included)."""
        others = [self._under(kid, clear, context) for kid in self._keys if kid != self.current]
        return [self.seal(clear, context), *others]

    def forms(self, value: str, context: bytes = STORED) -> list[str]:
        """A clear value, or a pseudonym of it made for `context` by any of these keys: the value under every
        key (what it may rest as)."""
        return self.seals(self.open(value, context) or value, context)

    def _under(self, kid: str, clear: str, context: bytes) -> str:
        sealed = self._keys[kid].encrypt(clear.encode(), [context])
        return f"{kid}.{base64.urlsafe_b64encode(sealed).rstrip(b'=').decode()}"

    def _open(self, token: str, context: bytes) -> str | None:
        m = _TOKEN.fullmatch(token)
        if m is None or m.group(1) not in self._keys:
            return None
        try:
            raw = base64.urlsafe_b64decode(m.group(2) + "=" * (-len(m.group(2)) % 4))
            return self._keys[m.group(1)].decrypt(raw, [context]).decode()
        except (InvalidTag, ValueError, binascii.Error):
            return None


def recipient(name: str) -> bytes:
    """The context of one recipient's pseudonyms: stable for it, unlinkable to anyone else's."""
    return b"recipient:" + name.encode()


def kid_of(token: str) -> str | None:
    """The key id a pseudonym names (None: not a pseudonym)."""
    m = _TOKEN.fullmatch(token)
    return m.group(1) if m else None


def new_key_line() -> str:
    """A fresh AES-256-SIV key (64 bytes) as a key file line; its id is a hash of the key."""
    key = AESSIV.generate_key(512)
    return f"{hashlib.sha256(key).hexdigest()[:8]} {base64.b64encode(key).decode()}"


def _parse(line: str) -> tuple[str, bytes]:
    kid, key = line.split(" ")
    return kid, base64.b64decode(key)


def keygen(path: Path, rotate: bool = False) -> str:
    """Write a new key file (refused if one exists), or with `rotate` put a new key first in an existing
    one, keeping the older keys for what was written under them. Only the owner may read it. The new kid."""
    line = new_key_line()
    if rotate:
        Keyring.load(path)  # refuses a file that is not a key file
        text = line + "\n" + path.read_text()
        tmp = path.with_name(path.name + ".new")
        _write_private(tmp, text)
        tmp.replace(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, line + "\n")
    return line.split(" ")[0]


def _write_private(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyProblem(f"{path} exists already (to add a key to it: --rotate)") from None
    with os.fdopen(fd, "w") as out:
        out.write(text)


def keyring_for(settings: Settings) -> Keyring:
    """The node's keys: FHIR_NODE_PSEUDONYM_KEY_FILE; for a local node (FHIR_NODE_AUTH=none) on SQLite without
    one, a key file beside the database, created on first start. Anything else without a key file cannot
    start: a production node's key is the operator's to make, keep and back up."""
    if settings.pseudonym_key_file is not None:
        return Keyring.load(settings.pseudonym_key_file)
    url = make_url(settings.database_url)
    if settings.auth == "none" and url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return Keyring.ephemeral()
        path = Path(url.database)
        local = path.with_name(path.name + LOCAL_SUFFIX)
        if not local.exists():
            keygen(local)
        return Keyring.load(local)
    raise KeyProblem(
        f"FHIR_NODE_PSEUDONYM_KEY_FILE is not set: with FHIR_NODE_AUTH={settings.auth} on "
        f"{url.get_backend_name()} the SSIN pseudonym key must be yours; write one with `fhir-node keygen PATH`, "
        "keep a copy apart from the database backups, and point FHIR_NODE_PSEUDONYM_KEY_FILE at it"
    )


_installed: Keyring | None = None


def install(ring: Keyring) -> None:
    """The keys this process pseudonymises with (one node per process)."""
    global _installed
    _installed = ring


def installed() -> Keyring:
    if _installed is None:
        raise KeyProblem("no pseudonym key loaded in this process (Node.from_settings loads it)")
    return _installed
