"""Datasets this project ships."""
