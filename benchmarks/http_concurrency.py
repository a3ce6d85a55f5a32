"""HTTP encoder concurrency: the same 2,048 WordNet glosses encoded through the test
embedding server (tests/embedding_server.py, serving WordLlama, ``delay`` seconds added to
every request, like a remote endpoint's latency) at 1, 4 and 8 requests in flight.

    python benchmarks/http_concurrency.py [delay]     # default 0.05 s
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from embedding_server import EmbeddingServer  # noqa: E402

from embedmigrate.demo_data import load_wordnet_sample  # noqa: E402
from embedmigrate.encoders import open_encoder  # noqa: E402


def main(delay: float = 0.05) -> None:
    texts = [d["text"] for d in load_wordnet_sample()[0]][:2048]
    model = open_encoder("wordllama")
    model.encode(texts[:10])  # load the model before timing
    server = EmbeddingServer(model.encode, model="wl")
    base = server.start()
    try:
        print("| concurrency | texts | requests | seconds | texts/s | max in flight |")
        print("|---|---|---|---|---|---|")
        for concurrency in (1, 4, 8):
            server.reset()
            server.delay_each = delay
            encoder = open_encoder(f"openai+{base}?model=wl&batch_size=32&concurrency={concurrency}")
            start = time.perf_counter()
            encoder.encode(texts)
            seconds = time.perf_counter() - start
            print(f"| {concurrency} | {len(texts)} | {len(server.requests)} | {seconds:.2f} | "
                  f"{len(texts) / seconds:.0f} | {server.max_in_flight} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.05)
