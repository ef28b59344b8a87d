"""The fine-tune-length hand check (experiments/benchmarks/finetune_length.py): its inputs and its timing.

The check itself fine-tunes full models for minutes (docs/benchmarks.md); here: the recipe parser, the
refusals that must come before any training (a method the table lacks, a results file of another setting),
and the side-by-side timing in both precisions on a tiny real model through onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))

import finetune_length  # noqa: E402

from latency_models.estimate import device_name  # noqa: E402


def test_parse_recipe_reads_epochs_and_lr_and_rejects_bad_text():
    assert finetune_length.parse_recipe("2:0.05") == (2.0, 0.05)
    assert finetune_length.parse_recipe("0.25:0.01") == (0.25, 0.01)
    for bad in ("2", "2:0.05:1", "two:0.05", "0:0.05", "1:-0.1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--recipe"):
            finetune_length.parse_recipe(bad)


def test_a_method_the_table_lacks_is_named_with_the_settings_methods():
    with pytest.raises(SystemExit, match=r"no cell 'mobilenetv2/int8/nope/s0'.*mobilenetv2 int8: .*amc"):
        finetune_length.main(["--model", "mobilenetv2", "--setting", "int8", "--methods", "nope"])


def test_results_of_another_setting_are_refused_before_any_training(tmp_path):
    out = tmp_path / "fp32.json"
    out.write_text(json.dumps({"device": device_name(), "setting": "fp32", "rows": {}}))
    with pytest.raises(SystemExit, match="fp32 setting, not int8"):
        finetune_length.main(["--model", "mobilenetv2", "--setting", "int8", "--methods", "amc",
                              "--out", str(out)])
    old = tmp_path / "old.json"  # written before the setting was recorded: fp32
    old.write_text(json.dumps({"device": device_name(), "rows": {}}))
    with pytest.raises(SystemExit, match="fp32 setting"):
        finetune_length.main(["--model", "mobilenetv2", "--setting", "int8", "--methods", "amc",
                              "--out", str(old)])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_speedups_beside_times_the_model_at_its_precision_beside_dense_fp32(precision):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    smaller = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    shape = (1, 28, 28)
    runs = finetune_length.speedups_beside(finetune_length.dense_artifact(dense, shape), smaller, shape, 2,
                                           precision)
    assert len(runs) == 2 and all(r > 0 for r in runs)
