"""Paths of the repository that the tests read."""
import os

# The repository root and its configs/ folder.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
