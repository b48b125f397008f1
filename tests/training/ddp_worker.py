"""One process of a data-parallel test run, started by tests/training/test_distributed.py with
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    python ddp_worker.py families OUT      # fit every contract case (and one with the compiled
                                           # SVI step) for 1 or 2 epochs; save each
                                           # process's parameters and losses to OUT/rank<r>.pt
    python ddp_worker.py kill CARD OUT     # fit CARD into OUT; process 1 dies after epoch 3
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

import pplvm  # noqa: E402
from pplvm.training import distributed  # noqa: E402


def families(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cases import CASES, plugin_cards

    distributed.init_from_env("cpu")
    saved = {
        "all_reduce_sum": [
            float(v)
            for t in distributed.all_reduce_sum([torch.tensor([distributed.rank() + 1.0]), torch.arange(3.0)])
            for v in t
        ]
    }
    cards = [dict(p.values[0]) for p in CASES]
    ppca = next(c for c in cards if c["name"] == "ppca_ml")  # the compiled SVI step: traced gradients
    cards.append({**ppca, "name": "ppca_traced", "training": {**ppca["training"], "compile": "trace"}})
    cards += plugin_cards()  # Pyro's ELBO and autoguide by name, a user's objective and guide by import path
    for card in cards:
        exact = card["guide"]["kind"] == "map" and card["objective"]["name"] in (
            "enum",
            "em",
        )  # compared to one process
        card["training"] = {**card["training"], "epochs": 2 if exact else 1, "progress": False}
        run = pplvm.Run.from_card(card).fit()
        saved[card["name"]] = {
            # parameters, not buffers: a BatchNorm's running statistics are each process's own
            # (DDP gives every process rank 0's before each step; rank 0's are saved)
            "params": {
                k: v.detach().clone() for k, v in [*run.model.named_parameters(), *run.guide.named_parameters()]
            },
            "train_loss": torch.tensor([h["train_loss"] for h in run.history], dtype=torch.float64),
        }
    torch.save(saved, out / f"rank{distributed.rank()}.pt")


def kill(card: str, out: Path) -> int:
    def die(trainer, metrics):
        if metrics["epoch"] == 3 and trainer.rank == 1:
            os._exit(17)  # no clean-up, as a killed process

    try:
        pplvm.Run.from_card(card).fit(out, callbacks=[die])
    except pplvm.PplvmError as err:
        print(json.dumps({"rank": distributed.rank(), "error": str(err)}), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "families":
        families(Path(args[0]))
        code = 0
    else:
        code = kill(args[0], Path(args[1]))
    distributed.shutdown()
    sys.exit(code)
