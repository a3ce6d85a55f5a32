"""Wall and CPU time of one default unsupervised ``linear`` fit on the WordNet
benchmark set, with the standard unpaired protocol of translate_quality.py
(old rows [0, 20904), new rows [20904, 41808); the fit uses 20,000 per side),
and its top-1 / verdict on the held-out 8,192. Record ``uptime`` with it.

    PYTHONPATH=. .venv/bin/python benchmarks/linear_fit_timing.py minilm mpnet [--profile]
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from translate_quality import MODELS, N_DOCS, NEW_END, OLD_END, load  # noqa: E402


def main(argv=None):
    from embedmigrate.metrics import rank_metrics
    from embedmigrate.translators import make_translator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", choices=MODELS)
    ap.add_argument("new", choices=MODELS)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/wordnet"))
    ap.add_argument("--profile", action="store_true", help="cProfile the fit (top 25 by own time)")
    args = ap.parse_args(argv)
    old = load(args.data, args.old, rows=slice(0, OLD_END))
    new = load(args.data, args.new, rows=slice(OLD_END, NEW_END))
    load_start = os.getloadavg()[0]
    translator, profile = make_translator("linear"), cProfile.Profile()
    t0, c0 = time.time(), time.process_time()
    if args.profile:
        profile.enable()
    translator.fit(old, new)
    profile.disable()
    wall, cpu = time.time() - t0, time.process_time() - c0
    held = slice(NEW_END, N_DOCS)
    pred = translator.translate(load(args.data, args.old, rows=held))
    conf = translator.meta["confidence"]
    print(json.dumps({"pair": f"{args.old}->{args.new}", "wall_s": round(wall, 1),
                      "cpu_s": round(cpu, 1), "load_start": load_start,
                      "load_end": os.getloadavg()[0],
                      "top1": rank_metrics(pred, load(args.data, args.new, rows=held), 8192)["top1"],
                      "aligned": conf["aligned"], "csls_gain": conf.get("csls_gain")}))
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
