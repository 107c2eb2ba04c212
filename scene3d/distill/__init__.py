"""Distillers: a teacher, a renderer, a loss and a student over the shared scene layer."""
