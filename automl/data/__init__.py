"""Datasets: Fashion-MNIST (default, from Debian's dataset-fashion-mnist) and CIFAR-10 pickle batches."""

from automl.data.datasets import DATASETS, DatasetInfo, DatasetSplits, dataset_info, load_dataset
from automl.data.errors import DatasetError

__all__ = ["DATASETS", "DatasetError", "DatasetInfo", "DatasetSplits", "dataset_info", "load_dataset"]
