"""The nodes file: which nodes the central index asks, and how it authenticates to each.

```yaml
nodes:
  - name: az-noord
    url: https://fhir.az-noord.be/fhir          # the node's FHIR base
    timeout: 20                                 # optional, seconds for the whole answer (default --timeout)
    auth:                                       # optional; none = no token
      client_id: bihr-central-index
      private_key: keys/az-noord.pem            # PEM, RSA (RS384) or EC P-384 (ES384); relative to this file
      token_url: https://idp.az-noord.be/token  # optional; default: the node's .well-known/smart-configuration
      scope: system/EpisodeOfCare.rs            # optional, default system/*.rs
      kid: central-2026                         # optional, default the key's RFC 7638 thumbprint
```
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fhir_node.api.middleware import is_loopback

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class NodesFileError(ValueError):
    """The nodes file cannot be used; the message names the file and the element at fault."""


def checked_url(url: str) -> str:
    """https, or plain http to a loopback address only: bearer tokens and health data never cross a network
    in clear. The trailing slash is dropped so that `{url}/{query}` and the node's own links line up."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{url!r}: plain http only to a loopback address, use https")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no query or fragment")
    return url.rstrip("/")


class Auth(BaseModel):
    """SMART backend services (client credentials, private_key_jwt) for one node."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    client_id: str = Field(min_length=1)
    private_key: PrivateKey
    token_url: str | None = None
    scope: str = Field("system/*.rs", min_length=1)
    kid: str | None = Field(None, min_length=1)

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, url: str | None) -> str | None:
        return url and checked_url(url)

    @property
    def algorithm(self) -> str:
        """RS384 or ES384: the two SMART asks every token endpoint to support."""
        return "RS384" if isinstance(self.private_key, rsa.RSAPrivateKey) else "ES384"

    @property
    def key_id(self) -> str:
        return self.kid or thumbprint(self.private_key)


class Node(BaseModel):
    """One node: a name for the report, its FHIR base, and how to get a token for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    url: str
    auth: Auth | None = None
    timeout: float | None = Field(None, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return checked_url(url)


class NodesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> NodesFile:
        for what in ("name", "url"):
            values = [getattr(node, what) for node in self.nodes]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"each node needs its own {what}: {', '.join(twice)} appear more than once")
        return self


def thumbprint(key: PrivateKey) -> str:
    """The RFC 7638 JWK thumbprint of the public key: a kid that the token server can compute too.
    Written here because neither PyJWT nor cryptography offers it (it is a hash of four fields)."""
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def load_nodes(path: str | Path) -> list[Node]:
    """The nodes of a YAML nodes file; NodesFileError (naming the file and element) when it cannot be used."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NodesFileError(f"{path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise NodesFileError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise NodesFileError(f"{path}: expected a mapping with a `nodes:` list")
    for i, node in enumerate(data.get("nodes") or []):
        if isinstance(node, dict) and isinstance(node.get("auth"), dict):
            _read_key(path, f"nodes[{i}].auth.private_key", node["auth"])
    try:
        return NodesFile.model_validate(data).nodes
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise NodesFileError(f"{path}: {problems}") from exc


def _read_key(nodes_file: Path, where: str, auth: dict[str, Any]) -> None:
    """Replaces `auth.private_key` (a path, relative to the nodes file) by the key it holds."""
    name = auth.get("private_key")
    if not isinstance(name, str):
        raise NodesFileError(f"{nodes_file}: {where}: the path of a PEM private key is required")
    key_path = nodes_file.parent / name
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise NodesFileError(f"{nodes_file}: {where}: {key_path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise NodesFileError(f"{nodes_file}: {where}: {key_path} is not an unencrypted PEM private key") from exc
    p384 = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    if not (isinstance(key, rsa.RSAPrivateKey) or p384):
        raise NodesFileError(f"{nodes_file}: {where}: an RSA (RS384) or EC P-384 (ES384) key is required")
    auth["private_key"] = key


def _where(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the element path in the file: nodes[2].auth.client_id."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"
