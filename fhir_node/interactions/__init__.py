"""One module per FHIR interaction. No HTTP objects here: plain values in, Versions or bytes out."""
