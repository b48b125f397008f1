"""Named arrays from files (``data.source = "arrays"``, ``file`` with ``input_columns``): every
input stays with its own row through the random split, labels and lengths take their roles, and
a bad file is refused in one line naming the file and the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pplvm.config import card_from_dict
from pplvm.data import load_dataset, read_arrays
from pplvm.errors import DataError


def _data(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _load(**data):
    return load_dataset(card_from_dict({"model": {"family": "gmm"}, "data": data}).data)


def test_named_arrays_are_split_by_row_with_their_inputs(tmp_path):
    """x = u @ (1, 2) + 10 * group row by row in the file: the relation holds exactly in every
    split (no input was shuffled apart from its row), labels follow their rows too."""
    rng = np.random.default_rng(0)
    u, group = rng.normal(size=(50, 2)), rng.integers(4, size=50)
    y = np.where(np.arange(50) % 5 == 0, -1, group % 2)
    x = (u @ [1.0, 2.0] + 10 * group)[:, None]
    ds = _load(source="arrays", path=_data(tmp_path, x=x, u=u, group=group, y=y), valid_fraction=0.3)
    assert (len(ds.train), len(ds.valid)) == (35, 15)
    for part, split in ((ds.train, "train"), (ds.valid, "valid")):
        assert sorted(part.inputs) == ["group", "u"] and part.inputs["group"].dtype == torch.long
        expected = part.inputs["u"] @ torch.tensor([1.0, 2.0]) + 10 * part.inputs["group"]
        torch.testing.assert_close(part.x[:, 0], expected)
        known = ds.labels[split] != -1
        assert torch.equal(ds.labels[split][known], part.inputs["group"][known] % 2)


def test_a_data_key_and_lengths_make_sequences(tmp_path):
    x = np.zeros((3, 4, 2))
    for i, n in enumerate([2, 4, 3]):
        x[i, :n] = i + 1
    path = _data(tmp_path, obs=x, lengths=[2, 4, 3], speed=[0.5, 1.0, 2.0])
    batch = read_arrays(path, key="obs")
    assert batch.lengths.tolist() == [2, 4, 3] and batch.inputs["speed"].tolist() == [0.5, 1.0, 2.0]
    assert float(batch.x[0].sum()) == 2 * 2 * 1  # two steps of two features, each 1


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"u": np.zeros((3, 2))}, "no array 'x' (the data, data.key); the file holds u"),
        ({"x": np.zeros((3, 2)), "u": np.zeros((4, 2))}, "key 'u': 4 entries but 'x' has 3"),
        ({"x": np.zeros((3, 2)), "words": np.array(["a", "b", "c"])}, "key 'words': expected numbers, got dtype <U1"),
        ({"x": np.zeros((3, 2)), "w": np.array([1, "a", None], dtype=object)}, "key 'w': an object array"),
        ({"x": np.array([[0.0], [np.nan]])}, "key 'x': 1 row(s) contain NaN or inf (rows 1)"),
    ],
)
def test_bad_files_are_refused_in_one_line_naming_the_key(tmp_path, arrays, message):
    path = _data(tmp_path, **arrays)
    with pytest.raises(DataError) as err:
        read_arrays(path)
    assert message in str(err.value) and path in str(err.value) and "\n" not in str(err.value)


def test_csv_columns_become_named_inputs(tmp_path):
    """name = column: a group index (integers); name = [columns]: float covariates; the rest is x."""
    table = np.array([[1.0, 0.5, 2.0, 7.0], [2.0, 0.1, 0.0, 8.0], [3.0, 0.2, 1.0, 9.0]])
    path = tmp_path / "t.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,g,c")
    ds = _load(source="file", path=str(path), input_columns={"g": 2, "uv": [0, 1]}, valid_fraction=0.0)
    order = ds.train.x[:, 0].long() - 7  # x holds column 3 alone
    assert ds.train.x.shape == (3, 1)
    assert torch.equal(ds.train.inputs["g"], torch.tensor([2, 0, 1])[order])
    torch.testing.assert_close(ds.train.inputs["uv"], torch.tensor(table[:, :2], dtype=torch.float32)[order])
    with pytest.raises(DataError, match=r"^data.input_columns.g: a single column is a group index and needs integers"):
        _load(source="file", path=str(path), input_columns={"g": 1})
    with pytest.raises(DataError, match=r"^data.input_columns.uv: columns \[2, 9\] are outside the file's 4 columns"):
        _load(source="file", path=str(path), input_columns={"uv": [2, 9]})
