"""Fine-tuning data through Hugging Face ``datasets``: rows read from JSON lines, JSON, CSV,
Parquet or a saved dataset folder, checked with errors naming file and line, tokenized with a loss
only on what the model must learn to write, optionally packed, and padded into batches.

- :mod:`.sources`: reading a path through ``datasets``, and saying where a row is;
- :mod:`.locate`: row index -> line in a text file, and finding a bad line ``datasets`` hides;
- :mod:`.formats`: the four row shapes and what makes a row invalid;
- :mod:`.encode`: tokenizing a row into ids and labels;
- :mod:`.packing`: several rows in one, best-fit decreasing, with ``position_ids``;
- :mod:`.collator`: padding rows into a batch;
- :mod:`.load`: :func:`load_training_data`, all of the above in order.
"""

from kernel_core.finetune.data.collator import DataCollator
from kernel_core.finetune.data.encode import IGNORE_INDEX, Example, encode_prompt, encode_row
from kernel_core.finetune.data.formats import row_problem
from kernel_core.finetune.data.load import load_training_data

__all__ = [
    "IGNORE_INDEX",
    "DataCollator",
    "Example",
    "encode_prompt",
    "encode_row",
    "load_training_data",
    "row_problem",
]
