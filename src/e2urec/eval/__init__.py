"""Evaluation: pure metric functions for utility, forgetting and membership inference."""
