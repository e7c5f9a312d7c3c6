"""Third-party OAuth servers (npm) that tests run apiauth against: see `harness`."""
