"""Stimulus sets: image tables, procedural demo images, narratives with word timings."""
