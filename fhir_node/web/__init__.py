"""The node's web page at `/`: plain HTML for the people around the node, built only from FHIR interactions
run as the caller (see `fhir_node.web.internal`)."""
