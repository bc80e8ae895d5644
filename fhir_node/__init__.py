"""fhir-node: the FHIR R4 node of a Belgian BIHR data holder."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
