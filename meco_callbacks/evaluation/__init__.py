"""Evaluation and conditional inference: loss per metadata condition, ICL with URLs, URL search, generation."""
