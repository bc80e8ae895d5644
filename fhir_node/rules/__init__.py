"""Domain rules of integrated-care inclusions: identifier check digits, and the invariants writes must keep."""
