"""Data checks give one clear error; files load; splits are deterministic and disjoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pplvm
from pplvm.config import card_from_dict
from pplvm.data import as_matrix, load_dataset, read_matrix


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((0, 3)), r"data: is empty \(0 rows\)"),
        (np.zeros(4), r"expected a 2-D array of shape \(N, D\), got shape \(4,\)"),
        (np.array([[1.0, np.nan], [0, 0], [np.inf, 1]]), r"2 row\(s\) contain NaN or inf \(rows 0, 2\)"),
        ([["a", "b"]], "expected a numeric array"),
    ],
)
def test_bad_matrices(x, message):
    with pytest.raises(pplvm.DataError, match=message):
        as_matrix(x)


def test_dimension_mismatch_names_the_expected_dimension():
    with pytest.raises(pplvm.DataError, match="expected 3 columns .*got 2"):
        as_matrix(np.zeros((4, 2)), dim=3)


def test_csv_with_header_and_npy(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.savetxt(tmp_path / "a.csv", x, delimiter=",", header="a,b,c", comments="")
    np.save(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(read_matrix(tmp_path / "a.csv")[0], x)
    np.testing.assert_array_equal(read_matrix(tmp_path / "a.npy")[0], x)
    xs, labels = read_matrix(tmp_path / "a.csv", label_column=2)
    np.testing.assert_array_equal(xs, x[:, :2])
    np.testing.assert_array_equal(labels, x[:, 2].astype(int))


def test_file_errors(tmp_path):
    with pytest.raises(pplvm.DataError, match="no such file"):
        read_matrix(tmp_path / "missing.npy")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(pplvm.DataError, match="expected a .npy or .csv"):
        read_matrix(tmp_path / "a.json")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(pplvm.DataError, match="not a plain numeric .npy"):
        read_matrix(tmp_path / "obj.npy")  # pickled object arrays are never loaded


def test_splits_are_deterministic_disjoint_and_complete():
    cfg = card_from_dict(
        {
            "model": {"family": "gmm"},
            "objective": {"name": "enum"},
            "data": {"source": "wine", "valid_fraction": 0.2, "test_fraction": 0.1},
        }
    ).data
    a, b = load_dataset(cfg), load_dataset(cfg)
    torch.testing.assert_close(a.train, b.train)
    assert (len(a.train), len(a.valid), len(a.test)) == (124, 36, 18)
    rows = torch.cat([a.train, a.valid, a.test])
    assert len(torch.unique(rows, dim=0)) == 178


def test_valid_rows_keeps_a_fixed_subset_of_the_validation_split_and_its_labels():
    raw = {
        "model": {"family": "gmm"},
        "objective": {"name": "enum"},
        "data": {"source": "iris", "valid_fraction": 0.4},
    }
    whole = load_dataset(card_from_dict(raw).data)
    raw["data"]["valid_rows"] = 10
    a, b = load_dataset(card_from_dict(raw).data), load_dataset(card_from_dict(raw).data)
    torch.testing.assert_close(a.valid, b.valid)  # the same rows every time
    torch.testing.assert_close(a.train, whole.train)  # training rows untouched
    assert len(a.valid) == 10 and len(whole.valid) == 60
    pos = [int(((whole.valid - row).abs().sum(-1) == 0).nonzero()[0]) for row in a.valid]
    assert pos == sorted(pos)  # rows of the split, in its order
    torch.testing.assert_close(a.labels["valid"], whole.labels["valid"][pos])
    raw["data"]["valid_rows"] = 1000  # more than there are: all of them
    assert len(load_dataset(card_from_dict(raw).data).valid) == 60


def test_fractions_leaving_no_training_rows_are_refused():
    with pytest.raises(pplvm.CardError, match="data.valid_fraction"):
        card_from_dict(
            {
                "model": {"family": "gmm"},
                "objective": {"name": "enum"},
                "data": {"source": "iris", "valid_fraction": 1.0},
            }
        )
    cfg = card_from_dict(
        {
            "model": {"family": "gmm"},
            "objective": {"name": "enum"},
            "data": {"source": "iris", "valid_fraction": 0.6, "test_fraction": 0.4},
        }
    ).data
    with pytest.raises(pplvm.DataError, match="leave no training rows"):
        load_dataset(cfg)


def test_moons_source_is_scikit_learns_two_moons():
    """The same points as sklearn.datasets.make_moons with the card's n, noise and seed."""
    import sklearn.datasets

    cfg = pplvm.config.card_from_dict(
        {
            "model": {"family": "gmm"},
            "data": {"source": "moons", "n": 50, "noise": 0.1, "seed": 3, "valid_fraction": 0.0},
        }
    ).data
    d = load_dataset(cfg)
    x, _ = sklearn.datasets.make_moons(50, noise=0.1, random_state=3)
    near = torch.cdist(d.train.double(), torch.tensor(x)).min(1).values  # split order is shuffled
    assert len(d.train) == 50 and near.max() < 1e-6  # float32 storage
