"""One Trainer run in its own process (used by test_hf.py): train a tiny GPT-2 on a zarrtok store with
ZarrtokTrainer, record every batch's first-token column, optionally resume from a checkpoint."""

import json
import os
import sys

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

from zarrtok.integrations.hf import ZarrtokTrainer
from zarrtok.train.dataset import TokenDataset


def main(store_path: str, output_dir: str, record: str, max_steps: int, resume: str | None,
         stop_at: int) -> None:
    tokens = np.load(store_path)  # any token source works; a small array keeps epochs a few steps long
    ds = TokenDataset(tokens, 32, split="train", as_dict=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=int(tokens.max()) + 1, n_positions=32, n_embd=32, n_layer=1,
                                       n_head=2))
    args = TrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=8,
                             save_steps=2, save_strategy="steps", logging_steps=1000, report_to=[],
                             learning_rate=1e-3, seed=3, use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0)
    seen = []

    class Recording(ZarrtokTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(inputs["input_ids"][:, :4].tolist())
            return super().training_step(model, inputs, num_items_in_batch)

    class KillAfterSave(TrainerCallback):  # the "interrupted" run dies right after writing checkpoint-<stop_at>
        def on_save(self, args, state, control, **kwargs):
            if stop_at and state.global_step == stop_at:
                with open(record, "w") as f:
                    json.dump({"batches": seen}, f)
                os._exit(0)

    trainer = Recording(model=model, args=args, train_dataset=ds, loader_options={"shuffle": "global"},
                        callbacks=[KillAfterSave()])
    trainer.train(resume_from_checkpoint=resume)
    with open(record, "w") as f:
        json.dump({"batches": seen, "steps_per_epoch": len(trainer.get_train_dataloader())}, f)


if __name__ == "__main__":
    store_path, output_dir, record, max_steps, resume, stop_at = sys.argv[1:7]
    main(store_path, output_dir, record, int(max_steps), None if resume == "-" else resume, int(stop_at))
