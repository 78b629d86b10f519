"""Batch scoring: resuming after an interruption that cut the last CSV row short."""

from __future__ import annotations

import csv

from oneclass.runs import predict, train


def test_resume_drops_a_cut_row_and_scores_each_image_once(mvtec_dir, tmp_path):
    run = tmp_path / "run"
    train("deep_svdd", str(mvtec_dir), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    out = tmp_path / "pred"
    first = predict(run, [str(mvtec_dir / "test")], out, heatmaps=False, batch_size=5)
    assert first["scored"] == 22
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    # interrupted while writing row 8: 7 complete rows and a fragment without a newline
    with open(out / "predictions.csv", "w") as fh:
        fh.write("path,score,label\n" + "".join(f"{r['path']},{r['score']},{r['label']}\n"
                                                for r in rows[:7]) + f"{rows[7]['path']},0.1")
    again = predict(run, [str(mvtec_dir / "test")], out, resume=True, heatmaps=True,
                    batch_size=5)
    assert again["skipped"] == 7 and again["scored"] == 15
    final = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["path"] for r in final) == sorted(r["path"] for r in rows)
    assert all(r["label"] in ("0", "1") for r in final)
    by_path = {r["path"]: float(r["score"]) for r in rows}
    assert all(abs(float(r["score"]) - by_path[r["path"]]) <= 1e-6 * max(1, abs(by_path[r["path"]]))
               for r in final)
    assert len(list((out / "heatmaps").glob("*.png"))) == 15  # for the images scored now
