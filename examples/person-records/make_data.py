"""Generate the person-records LoRA demo data: train.jsonl and eval.jsonl.

Task: read one English sentence about a person and write it as a record in a
strict house format that the prompt does not spell out:

    name: <Name>; age: <digits>; city: <City>

Fields are always in that order, whatever order the sentence mentions them in,
and the sentence may carry distractors (a year, a count, a job, a pet).

Held-out rows are genuinely held out: every eval row uses a name AND a city
that never appear anywhere in train.jsonl, so no eval prompt (nor its answer)
can occur in train. The sentence templates are shared; what the adapter must
learn is the format and which span goes in which field.

Deterministic: a fixed seed, the stdlib ``random`` module only, no inputs.
Run ``python examples/person-records/make_data.py`` to (re)write both files
next to this script; ``--check`` exits 1 if the committed files differ.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20240607
N_TRAIN = 320
N_EVAL = 50

PROMPT = "Turn the sentence into a record.\nSentence: {sentence}\nRecord:\n"

NAMES = [
    "Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Greta", "Ravi", "Sofia", "Liam",
    "Nadia", "Pedro", "Hannah", "Yusuf", "Elena", "Marco", "Ingrid", "Tariq", "Chloe", "Diego",
    "Freya", "Hugo", "Amara", "Jonas", "Leila", "Mateo", "Priya", "Oscar", "Zara", "Felix",
    "Mina", "Rafael", "Tessa", "Ivan", "Noor", "Caleb", "Ada", "Bruno", "Selin", "Dmitri",
    "Keiko", "Louis", "Fatima", "Nils", "Carmen", "Arjun", "Olga", "Samuel", "Yara", "Emil",
    "Beatriz", "Kofi", "Hana", "Victor", "Lena", "Mohammed", "Iris", "Pablo", "Sana", "Anton",
]
CITIES = [
    "Lisbon", "Osaka", "Nairobi", "Toronto", "Oslo", "Lima", "Prague", "Dublin", "Cairo", "Madrid",
    "Seoul", "Vienna", "Accra", "Denver", "Porto", "Quito", "Kyoto", "Munich", "Hanoi", "Perth",
    "Buenos Aires", "New York", "Cape Town", "Sao Paulo", "Tel Aviv", "Rio de Janeiro", "Hong Kong",
    "Berlin", "Athens", "Warsaw", "Helsinki", "Manila", "Bogota", "Krakow", "Tunis", "Zagreb",
    "Glasgow", "Seville", "Montreal", "Chennai",
]
# Held out: these names and cities occur only in eval.jsonl.
EVAL_NAMES = NAMES[-12:]
EVAL_CITIES = CITIES[-8:]
TRAIN_NAMES = NAMES[:-12]
TRAIN_CITIES = CITIES[:-8]

JOBS = ["nurse", "baker", "pilot", "teacher", "plumber", "chemist", "lawyer", "painter", "farmer", "chef"]
PETS = ["cat", "dog", "parrot", "rabbit", "tortoise"]

# {n}=name, {a}=age, {c}=city; {y}=a year, {k}=a small count, {j}=job, {p}=pet are distractors.
TEMPLATES = [
    "{n} is {a} years old and lives in {c}.",
    "{n}, {a}, moved to {c} in {y}.",
    "Living in {c}, {n} turned {a} last month.",
    "At {a}, {n} works as a {j} in {c}.",
    "{c} has been home to {n} since {y}; {n} is now {a}.",
    "Our new {j}, {n}, is {a} and commutes from {c}.",
    "{n} ({a}) owns {k} {p}s and lives in {c}.",
    "The {a}-year-old {n} grew up in {c}.",
    "In {y}, {n} left for {c}. Age today: {a}.",
    "Meet {n} from {c}, who is {a} and has {k} siblings.",
    "{n} celebrated turning {a} in {c}.",
    "Age {a}, city {c}, name {n}.",
    "{n} lives in {c} with a {p} and is {a} years old.",
    "Having turned {a}, {n} opened a shop in {c} with {k} friends.",
]


def _row(rng: random.Random, names: list[str], cities: list[str]) -> dict[str, str]:
    name, city = rng.choice(names), rng.choice(cities)
    age = rng.randint(19, 87)
    sentence = rng.choice(TEMPLATES).format(
        n=name,
        a=age,
        c=city,
        y=rng.randint(1995, 2023),
        k=rng.randint(2, 9),
        j=rng.choice(JOBS),
        p=rng.choice(PETS),
    )
    return {"prompt": PROMPT.format(sentence=sentence), "completion": f"name: {name}; age: {age}; city: {city}"}


def make_rows() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return (train, eval) rows; the same every run."""
    rng = random.Random(SEED)
    train: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(train) < N_TRAIN:
        row = _row(rng, TRAIN_NAMES, TRAIN_CITIES)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            train.append(row)
    held_out: list[dict[str, str]] = []
    while len(held_out) < N_EVAL:
        row = _row(rng, EVAL_NAMES, EVAL_CITIES)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            held_out.append(row)
    return train, held_out


def dumps(rows: list[dict[str, str]]) -> str:
    """The exact bytes written to a .jsonl file (one object a line, trailing newline)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args(argv)
    train, held_out = make_rows()
    files = {"train.jsonl": dumps(train), "eval.jsonl": dumps(held_out)}
    if args.check:
        stale = [name for name, text in files.items() if not (args.out_dir / name).is_file()
                 or (args.out_dir / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{args.out_dir / name} differs from what make_data.py generates", file=sys.stderr)
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out_dir / name} ({text.count(chr(10))} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
