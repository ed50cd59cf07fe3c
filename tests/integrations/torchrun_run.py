"""One rank of a ``torchrun --nproc_per_node=2`` job (used by test_torchrun.py): gloo process group, a
loader from ``store.dataloader`` (rank and world size from torch.distributed), the README epoch loop;
stops after ``stop_at`` batches (writing its state) or resumes from a saved state."""

import json
import os
import sys

import torch
import torch.distributed as dist

import zarrtok

EPOCHS = 2


def main(url: str, out: str, stop_at: int, resume: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    store = zarrtok.open(url)
    loader = store.dataloader("train", 32, 4, seed=11, return_index=True, remainder="partial")
    assert (loader.rank, loader.world_size) == (rank, 2), loader
    if resume != "-":
        with open(resume) as f:
            loader.load_state_dict(json.load(f))
    seen, steps = [], 0
    for epoch in range(loader.epoch, EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            seen.append([epoch, batch["index"].tolist()])
            steps += 1
            if steps == stop_at:
                break
        if steps == stop_at:
            break
    count = torch.tensor([sum(len(b) for _, b in seen)])
    dist.all_reduce(count)  # a collective over both ranks: the group works
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"batches": seen, "state": loader.state_dict(), "windows_all_ranks": int(count)}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
