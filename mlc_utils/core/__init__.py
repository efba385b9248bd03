"""Foundations every layer uses: atomic file writes, typed parameters, fingerprints of code and data, devices."""
