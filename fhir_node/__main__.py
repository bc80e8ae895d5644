"""`python -m fhir_node` is the `fhir-node` command."""

from fhir_node.cli import main

raise SystemExit(main())
