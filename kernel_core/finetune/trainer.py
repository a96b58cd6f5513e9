"""``AdapterTrainer``: transformers' ``Trainer`` for a :class:`kernel_core.peft.PeftModel`.

``Trainer`` does the training (Accelerate underneath: devices, DDP/FSDP/DeepSpeed, mixed precision,
accumulation with the loss normalised by the step's token count, clipping, schedules, eval,
callbacks, ``report_to``, resuming). What it cannot know about our adapters, this subclass adds:

- **Adapters, not models, are saved.** ``Trainer`` saves only its own library's ``PeftModel``
  as an adapter; anything else it writes as a whole ``model.safetensors``. Here a checkpoint and
  the final save hold the adapter in PEFT's format (``save_pretrained``), and resuming loads it
  back into the model's adapter.
- **Checkpoints appear whole or not at all.** ``Trainer`` writes ``checkpoint-<step>`` in place, so
  a run killed while saving leaves a folder that ``get_last_checkpoint`` would resume from. Here
  every rank writes into one hidden staging folder, and the main process renames it into place
  once all have finished (:mod:`kernel_core.atomic`): a resume only ever sees complete checkpoints.
- **No pickle.** ``Trainer`` stores its ``TrainingArguments`` with ``torch.save`` (a pickle of an
  arbitrary object); here they go to ``training_args.json``. The optimizer, scheduler and RNG
  files are ``Trainer``'s own, read back only with ``torch.load(weights_only=True)``.
- **The eval loss is the mean over target tokens**, like the training loss. ``Trainer`` averages
  the batches' mean losses, which weighs a token of a short batch more than one of a long batch.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging as hf_logging

from kernel_core.atomic import hidden_staging, publish_folder, raise_if_disk_full, remove_stale
from kernel_core.errors import CheckpointError
from kernel_core.finetune.data import IGNORE_INDEX

#: ``TrainingArguments`` of the run, as JSON, in every checkpoint and the final output.
TRAINING_ARGS_JSON = "training_args.json"
#: Written by ``Trainer`` (a pickle); replaced by :data:`TRAINING_ARGS_JSON`.
_TRAINING_ARGS_PICKLE = "training_args.bin"

logger = hf_logging.get_logger(__name__)


class AdapterTrainer(Trainer):
    """``Trainer`` that saves and resumes adapters, with crash-safe, pickle-free checkpoints."""

    _staging_root: Path | None = None
    #: During an evaluation, ``[rows, 2]`` tensors: each row's summed loss and target-token count.
    _eval_rows: list[torch.Tensor] | None = None

    def _get_output_dir(self, trial: Any) -> str:
        """During a checkpoint save, the staging folder every rank writes into."""
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = self._staging_root = self._shared_staging(run_dir / name)
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every rank's RNG state is in the staging folder
            if self.args.should_save:
                publish_folder(staging / name, run_dir / name)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise_if_disk_full(exc, run_dir / name)
            raise
        finally:
            self._staging_root = None
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint).parent == staging:
                self.state.best_model_checkpoint = str(run_dir / Path(self.state.best_model_checkpoint).name)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _shared_staging(self, target: Path) -> Path:
        """One hidden staging folder for ``target``, made by the main process, named to all ranks."""
        from accelerate.utils import broadcast_object_list

        names = [None]
        if self.args.should_save:
            remove_stale(target.parent)
            names = [str(hidden_staging(target))]
        if self.args.world_size > 1:
            broadcast_object_list(names, from_process=0)
        return Path(names[0])

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """The adapter (PEFT format) and the arguments as JSON (with the world size, which a
        resume must match). Not the tokenizer: it is the base model's, unchanged."""
        if not self.args.should_save:
            return
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model, keep_torch_compile=False).save_pretrained(folder)
        document = {**json.loads(self.args.to_json_string()), "world_size": self.args.world_size}
        (folder / TRAINING_ARGS_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (folder / _TRAINING_ARGS_PICKLE).unlink(missing_ok=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Put the checkpoint's adapter weights into the model's active (trainable) adapter."""
        from kernel_core.peft.state_dict import read_adapter

        peft_model = self.accelerator.unwrap_model(model if model is not None else self.model)
        try:
            _, tensors = read_adapter(resume_from_checkpoint)
        except Exception as exc:
            raise CheckpointError(f"cannot resume from {resume_from_checkpoint}: {exc}") from exc
        peft_model._load_tensors(peft_model.active_adapter, tensors, str(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        if self.state.best_model_checkpoint is not None:
            self._load_from_checkpoint(self.state.best_model_checkpoint)

    def evaluation_loop(
        self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> Any:
        """``Trainer``'s loop, with ``<prefix>_loss`` the mean over every target token of the set."""
        self._eval_rows = []
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
            total, count = torch.cat(self._eval_rows).sum(0).tolist() if self._eval_rows else (0.0, 0.0)
        finally:
            self._eval_rows = None
        if count and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = total / count
        return output

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self._eval_rows is not None and inputs.get("labels") is not None:
            # every rank's rows, without the ones a rank repeated to fill its last batch
            self._eval_rows.append(self.accelerator.gather_for_metrics(_row_losses(outputs["logits"], inputs["labels"])).cpu())
        return (loss, outputs) if return_outputs else loss


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[rows, 2]``: each row's summed next-token loss and its number of target tokens (float64).
    Logits longer than the labels have positions an adapter put before the input (prompt
    tuning's virtual tokens), whose labels are ignored, as the model's own loss ignores them."""
    extra = logits.shape[1] - labels.shape[1]
    if extra > 0:
        labels = torch.nn.functional.pad(labels, (extra, 0), value=IGNORE_INDEX)
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return torch.stack([losses.sum(1), (targets != IGNORE_INDEX).sum(1).to(losses.dtype)], dim=1).double()


def check_checkpoint(folder: Path, world_size: int) -> None:
    """Refuse to resume from a checkpoint that is not whole, naming the file: ``Trainer`` would
    resume without a missing optimizer state (leaving the trajectory) or fail deep inside on a
    damaged file. Checkpoints this trainer writes are published whole; this catches later damage."""
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    needed = ["adapter_config.json", "adapter_model.safetensors", "trainer_state.json", TRAINING_ARGS_JSON, "optimizer.pt", "scheduler.pt", *rng]
    for name in needed:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"cannot resume from {folder}: {name} is missing, so the run would not continue where it stopped")
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix in (".pt", ".pth"):
                with zipfile.ZipFile(path) as archive:  # torch.save's format: a zip whose CRCs catch damage
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"{bad} fails its checksum")
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"cannot resume from {folder}: {name} is damaged ({exc})") from None
