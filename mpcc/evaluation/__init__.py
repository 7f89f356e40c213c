"""Evaluation of MPCC models: generation, strict answer parsing, metrics, reports and diagnostics."""
