"""Who asks and what they may see: authentication, the access policy, relationships."""
