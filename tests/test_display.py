"""The live view: counts, the current front, elapsed time and the estimate of what is left."""

from io import StringIO
from pathlib import Path

from rich.console import Console

from search.display import Display, Snapshot
from search.records import COMPLETE, FAILED, PRUNED, REJECTED, RUNNING, TrialRecord
from search.space import load_space

SPACE = load_space(Path(__file__).resolve().parent.parent / "spaces" / "dynamic.yaml")  # count 24, 9 minutes


def record(number, status, values=None, curve=(), reference=None, mixer="dynamic"):
    arch = {
        "mixer": mixer,
        "embed_dim": 32,
        "depth": 4,
        "every": 3,
        "offset": 1,
        "dynamic": {"linear_predictor": "bilateral"},
    }
    return TrialRecord(
        number=number,
        state="COMPLETE",
        status=status,
        params={},
        values=values,
        arch=arch,
        curve=list(curve),
        reference=reference,
        gmacs=0.001,
        mparams=0.1,
    )


RECORDS = [
    record(0, COMPLETE, [0.8, 0.002], [0.8], "weightformer"),
    record(1, COMPLETE, [0.5, 0.001], [0.5], mixer="attention"),
    record(2, COMPLETE, [0.4, 0.003], [0.4], mixer="static"),  # dominated by trial 0
    record(3, PRUNED, None, [0.1]),
    record(4, REJECTED),
    record(5, FAILED),
]


def snapshot() -> Snapshot:
    return Snapshot.of(RECORDS, SPACE, elapsed_s=120.0, running=2, finished_this_run=5)


def test_snapshot_counts_and_keeps_the_front_best_first():
    s = snapshot()
    assert s.counts == {COMPLETE: 3, PRUNED: 1, FAILED: 1, REJECTED: 1, RUNNING: 2}
    assert [r.number for r in s.front] == [0, 1]  # trial 2 is dominated by trial 0
    # 19 of 24 to go at this run's pace would take 7:36, but the 9-minute timeout leaves 7:00.
    assert s.done == 5 and s.eta_s() == min(120.0 * 19 / 5, 9 * 60 - 120.0) == 420.0


def test_live_view_shows_counts_front_and_time_left():
    text = StringIO()
    Console(file=text, width=120).print(Display(quiet=False).render(snapshot()))
    rendered = text.getvalue()
    assert "done 5 of 24" in rendered and "running 2" in rendered and "pruned 1" in rendered
    assert "rejected 1" in rendered and "failed 1" in rendered
    assert "dynamic/bilateral [weightformer]" in rendered and "attention" in rendered
    assert "2:00 elapsed, about 7:00 left" in rendered


def test_quiet_mode_logs_lines():
    out = StringIO()
    display = Display(quiet=True, console=Console(file=out, width=200))
    assert not display.live
    display.trial_ended(7, PRUNED, [0.1, 0.2], 0.0012, "dominated at epoch 2 by trial 3")
    display.stop(snapshot())
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(
        "trial 7 pruned, accuracy 0.200 after 2 epochs, 0.0012 GMACs (dominated at epoch 2 by trial 3)"
    )
    assert "finished: 3 complete, 1 pruned, 1 failed, 1 rejected in 2:00" in lines[1]


def test_the_live_view_ends_its_last_line_when_output_is_not_a_terminal():
    """Piped to a file or another program, what follows the view must not join its last line."""
    out = StringIO()
    display = Display(quiet=False, console=Console(file=out, width=120))
    display.start(SPACE)
    display.stop(snapshot())
    assert out.getvalue().endswith("┘\n")


def test_trials_on_the_cpu_for_want_of_a_gpu_are_shown():
    fallback = record(6, COMPLETE, [0.3, 0.001], [0.3])
    fallback.cpu_fallback = True
    s = Snapshot.of([*RECORDS, fallback], SPACE, elapsed_s=120.0, running=0, finished_this_run=6)
    text = StringIO()
    Console(file=text, width=160).print(Display(quiet=False).render(s))
    assert "on the CPU, no usable GPU 1" in text.getvalue()
    out = StringIO()
    Display(quiet=True, console=Console(file=out, width=300)).stop(s)
    assert ", 1 trained on the CPU for want of a GPU;" in out.getvalue()
    text = StringIO()
    Console(file=text, width=160).print(Display(quiet=False).render(snapshot()))
    assert "on the CPU" not in text.getvalue()  # said only when it happened
