"""HTTP only: routes, content negotiation, headers, and OperationOutcome error answers."""
