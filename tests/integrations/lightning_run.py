"""One Lightning run in its own process (used by test_lightning.py): train a tiny next-token model with
``lightning.Trainer`` on a ZarrtokDataModule, record every training batch's window indices, checkpoint
after every step, optionally resume with ``trainer.fit(ckpt_path=...)``."""

import json
import sys

import numpy as np
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from zarrtok.integrations.lightning import ZarrtokDataModule
from zarrtok.train.dataset import TokenDataset


class TinyLM(pl.LightningModule):
    """Embedding -> linear next-token model; the loss uses the loader's shifted labels."""

    def __init__(self, vocab: int, record: list):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)
        self.record = record

    def training_step(self, batch, batch_idx):
        self.record.append(batch["index"].tolist())
        logits = self.head(self.emb(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].view(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(tokens_path: str, ckpt_dir: str, record: str, max_steps: int, resume: str | None, workers: int) -> None:
    tokens = np.load(tokens_path)
    ds = TokenDataset(tokens, 32, split="train")
    torch.manual_seed(0)
    seen: list = []
    model = TinyLM(int(tokens.max()) + 1, seen)
    dm = ZarrtokDataModule(train_dataset=ds, batch_size=8, seed=3, shuffle="global", return_index=True,
                           num_workers=workers)
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_model_summary=False, callbacks=[ckpt], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    with open(record, "w") as f:
        json.dump({"batches": seen, "steps_per_epoch": len(dm.train_dataloader()),
                   "final_state": dm.loader.state_dict(), "epoch": trainer.current_epoch}, f)


if __name__ == "__main__":
    tokens_path, ckpt_dir, record, max_steps, resume, workers = sys.argv[1:7]
    main(tokens_path, ckpt_dir, record, int(max_steps), None if resume == "-" else resume, int(workers))
