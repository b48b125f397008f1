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
