"""Datasets in: tabular files, arrays, image folders, standardization and splits."""

from .dataset import Dataset

__all__ = ["Dataset"]
