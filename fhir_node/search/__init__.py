"""FHIR search: definitions (SearchParameter resources) drive index extraction, query parsing and SQL."""
