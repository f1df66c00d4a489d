"""Figures and tables that summarise studies."""
