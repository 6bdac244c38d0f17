"""Pareto analysis and report rendering."""
