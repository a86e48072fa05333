"""Ensembles of trained runs: members, weighting schemes, vectorised scoring, selection, report."""
