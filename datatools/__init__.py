"""Offline conversion of Kinetics-style video trees into sharded MindRecord files."""
