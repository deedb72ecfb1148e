"""Reporting: Markdown/CSV result tables and matplotlib plots."""
