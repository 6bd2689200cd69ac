"""Fixtures that run the replay exchange on loopback (filled in by the replay work)."""
