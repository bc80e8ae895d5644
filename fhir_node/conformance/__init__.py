"""What the node declares about itself: the CapabilityStatement (and, later, the published profiles)."""
