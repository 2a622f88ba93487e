"""Encode texts with plain sentence-transformers; the baseline of encode_overhead.py.

    python bench/_raw_encode.py IN.json OUT.npy --model DIR --batch-size 32 [--no-normalize]

IN.json holds ``{"texts": [...]}``. Writes the vectors (float32, one row per text, in order) to
OUT.npy and prints one JSON line: the seconds spent importing, loading the model and in the
``encode`` call alone, and the torch thread count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", type=Path, help='JSON file: {"texts": [...]}')
    parser.add_argument("out", type=Path, help="where to write the vectors (.npy)")
    parser.add_argument("--model", required=True, help="a sentence-transformers folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-normalize", dest="normalize", action="store_false")
    parser.add_argument("--prompt", default="", help="prefix for every text (none by default)")
    parser.add_argument("--max-seq-length", type=int, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    texts: list[str] = json.loads(args.texts.read_text())["texts"]

    t0 = time.perf_counter()
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    t1 = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu")
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    t2 = time.perf_counter()
    vectors = model.encode(
        texts,
        batch_size=args.batch_size,
        normalize_embeddings=args.normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
        prompt=args.prompt or None,
    )
    t3 = time.perf_counter()

    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    report = {
        "rows": len(texts),
        "import_seconds": t1 - t0,
        "load_seconds": t2 - t1,
        "encode_seconds": t3 - t2,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
