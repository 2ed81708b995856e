"""Signed model artifacts, the TUF image repository, release keys and rollouts."""
