"""Resource validation: what every write must satisfy before it reaches the store."""
