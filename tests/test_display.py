"""The live view: counts, the current front, elapsed time and the estimate of what is left."""
from io import StringIO

from rich.console import Console

from search import store
from search.display import Display, Snapshot


def record(number, status, values=None, curve=(), reference=None, mixer="dynamic"):
    arch = {"mixer": mixer, "embed_dim": 32, "depth": 4, "every": 3, "offset": 1,
            "dynamic": {"linear_predictor": "bilateral"}}
    return store.TrialRecord(number=number, state="COMPLETE", status=status, params={}, values=values,
                             arch=arch, curve=list(curve), reference=reference, gmacs=0.001, mparams=0.1)


def snapshot() -> Snapshot:
    records = [record(0, store.COMPLETE, [0.8, 0.002], [0.8], "weightformer"),
               record(1, store.COMPLETE, [0.5, 0.001], [0.5], mixer="attention"),
               record(2, store.COMPLETE, [0.4, 0.003], [0.4], mixer="static"),  # dominated by trial 0
               record(3, store.PRUNED, None, [0.1]), record(4, store.REJECTED), record(5, store.FAILED)]
    counts = {s: sum(r.status == s for r in records) for s in (store.COMPLETE, store.PRUNED, store.FAILED, store.REJECTED)}
    counts[store.RUNNING] = 2
    front = [records[0], records[1]]
    return Snapshot("demo", 120.0, counts, 10, None, ["accuracy", "gmacs"], front, finished_this_run=5)


def test_live_view_shows_counts_front_and_time_left():
    text = StringIO()
    Console(file=text, width=120).print(Display(quiet=False).render(snapshot()))
    rendered = text.getvalue()
    assert "done 5 of 10" in rendered and "running 2" in rendered and "pruned 1" in rendered
    assert "rejected 1" in rendered and "failed 1" in rendered
    assert "dynamic/bilateral [weightformer]" in rendered and "attention" in rendered
    assert "2:00 elapsed, about 2:00 left" in rendered  # 5 done in 2 minutes, 5 to go


def test_quiet_mode_logs_lines():
    out = StringIO()
    display = Display(quiet=True, console=Console(file=out, width=200))
    display.trial_ended(7, store.PRUNED, [0.1, 0.2], 0.0012, "dominated at epoch 2 by trial 3")
    display.stop(snapshot())
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("trial 7 pruned, accuracy 0.200 after 2 epochs, 0.0012 GMACs (dominated at epoch 2 by trial 3)")
    assert "finished: 3 complete, 1 pruned, 1 failed, 1 rejected in 2:00" in lines[1]
