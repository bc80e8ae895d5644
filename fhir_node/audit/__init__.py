"""The security log: AuditEvents built per request (IHE BALP), written fail-closed, hash-chained."""
