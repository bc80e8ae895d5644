"""SMART App Launch discovery (`.well-known/smart-configuration`) and the CapabilityStatement's
`rest.security`: how a client gets a token this node accepts. The identity provider stays outside."""

from __future__ import annotations

from typing import Any

from fhir_node.registry import KINDS
from fhir_node.security.principal import ROLES
from fhir_node.settings import Settings

_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def smart_configuration(settings: Settings) -> dict[str, Any] | None:
    """The discovery document, or None when the node takes no tokens (FHIR_NODE_AUTH=none)."""
    if settings.auth != "jwt":
        return None
    out: dict[str, Any] = {
        "issuer": settings.jwt_issuer,
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [f"{ctx}/{t}.cruds" for ctx in ("system", "user", "patient") for t in KINDS],
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "context-standalone-patient"],
        "code_challenge_methods_supported": ["S256"],
        "fhir_node_roles_supported": list(ROLES),
    }
    if settings.smart_token_endpoint:
        out["token_endpoint"] = settings.smart_token_endpoint
    if settings.jwt_jwks and settings.jwt_jwks.startswith("https://"):
        out["jwks_uri"] = settings.jwt_jwks
    return out


def rest_security(settings: Settings) -> dict[str, Any]:
    """CapabilityStatement.rest.security for the configured authentication."""
    if settings.auth != "jwt":
        return {"cors": False, "description": "No authentication: the node operator on loopback only."}
    security: dict[str, Any] = {
        "cors": False,
        "service": [{"coding": [{"system": _SERVICE, "code": "SMART-on-FHIR"}]}],
        "description": f"Bearer JWTs (RS256, ES256, PS256) issued by {settings.jwt_issuer} for audience "
        f"{settings.jwt_audience}, with a fhir_node_role claim and SMART v2 scopes; see "
        ".well-known/smart-configuration.",
    }
    if settings.smart_token_endpoint:
        security["extension"] = [
            {"url": _OAUTH_URIS, "extension": [{"url": "token", "valueUri": settings.smart_token_endpoint}]}
        ]
    return security
