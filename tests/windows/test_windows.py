"""Adapter windows: the state machine, exact aggregation, the disposition matrix, replays, promotion, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.chain import parse_receipt
from lit_psion.core.windows import (
    ACCEPTED,
    NEXT_STATE,
    QUARANTINED,
    REJECTED,
    REPLAY_REQUIRED,
    WINDOW_STATES,
    WindowStateError,
    advance,
)
from lit_psion.windows import adversary
from lit_psion.windows.aggregate import Adapter, exact_delta, stacked
from lit_psion.windows.contribute import ADAPTER, contribute, train_adapter
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import Program, plan_window
from lit_psion.windows.validate import delta_inner, layer_factors, seal
from tests.windows.helpers import new_program, receipts, write_settings

# -- the state machine -------------------------------------------------------------------


@pytest.mark.parametrize("current", WINDOW_STATES)
@pytest.mark.parametrize("target", WINDOW_STATES)
def test_only_the_one_next_state_is_legal(current: str, target: str) -> None:
    if NEXT_STATE.get(current) == target:
        assert advance(current, target) == target
    else:
        with pytest.raises(WindowStateError):
            advance(current, target)


def test_unknown_states_are_refused() -> None:
    with pytest.raises(WindowStateError, match="unknown state"):
        advance("open", "sealed")
    with pytest.raises(WindowStateError):
        advance("active", "closed")


# -- exact aggregation -------------------------------------------------------------------


def _random_adapter(rank: int, alpha: float, weight: float, seed: int, out: int = 24, inp: int = 16) -> Adapter:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"model.head.lora_a": torch.randn(rank, inp, generator=generator),
               "model.head.lora_b": torch.randn(out, rank, generator=generator)}  # fmt: skip
    return Adapter(tensors, rank, alpha, weight)


def test_aggregation_is_exact_in_weight_space_across_ranks() -> None:
    adapters = [_random_adapter(4, 8.0, 0.25, 0), _random_adapter(8, 16.0, 0.5, 1), _random_adapter(4, 4.0, 0.25, 2)]
    expected = sum(a.weight * (a.alpha / a.rank) * a.tensors["model.head.lora_b"].double()
                   @ a.tensors["model.head.lora_a"].double() for a in adapters)
    delta = exact_delta(adapters)["model.head"]
    assert float((delta - expected).norm() / expected.norm()) < 1e-6
    # The stacked adapter (rank 16, scaling 1) is the same update.
    stack = stacked(adapters)
    assert stack["model.head.lora_a"].shape[0] == 16
    from_stack = stack["model.head.lora_b"].double() @ stack["model.head.lora_a"].double()
    assert float((from_stack - expected).norm() / expected.norm()) < 1e-6
    # Averaging the factors (what FedAvg does to LoRA) is not the aggregate.
    same_rank = [_random_adapter(4, 8.0, 1 / 3, seed) for seed in range(3)]
    mean_b = sum(a.tensors["model.head.lora_b"] for a in same_rank) / 3
    mean_a = sum(a.tensors["model.head.lora_a"] for a in same_rank) / 3
    exact = exact_delta(same_rank)["model.head"]
    fedavg = 2.0 * (mean_b.double() @ mean_a.double())
    assert float((fedavg - exact).norm() / exact.norm()) > 0.5


def test_norms_and_inner_products_are_computed_on_the_delta_not_the_factors() -> None:
    first, second = _random_adapter(4, 8.0, 1.0, 3), _random_adapter(8, 8.0, 1.0, 4)
    f1, f2 = layer_factors(first.tensors, 4, 8.0), layer_factors(second.tensors, 8, 8.0)
    d1, d2 = exact_delta([first])["model.head"], exact_delta([second])["model.head"]
    assert delta_inner(f1, f2) == pytest.approx(float((d1 * d2).sum()), rel=1e-9)
    # BA = (BR)(R^-1 A): other factors, the same delta, the same norm.
    r = torch.randn(4, 4, generator=torch.Generator().manual_seed(5)).double() + 4 * torch.eye(4).double()
    other = {"model.head.lora_b": first.tensors["model.head.lora_b"].double() @ r,
             "model.head.lora_a": torch.linalg.solve(r, first.tensors["model.head.lora_a"].double())}  # fmt: skip
    assert delta_inner(layer_factors(other, 4, 8.0), layer_factors(other, 4, 8.0)) == pytest.approx(
        delta_inner(f1, f1), rel=1e-9)  # fmt: skip


# -- one program through windows -----------------------------------------------------------


@pytest.fixture(scope="module")
def program(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Program:
    """w-0001: four honest contributors (promoted); w-0002: the disposition matrix."""
    root = new_program(base, tmp_path_factory.mktemp("program") / "windows")
    plan = plan_window(root)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        contribute(root, plan.window_id, assignment.assignment_id)
    promotion = close_window(root, plan.window_id)
    assert promotion["decision"] == "promote", promotion
    return Program(root)


def test_honest_contributors_are_accepted_and_promoted(program: Program) -> None:
    dispositions = read_json(program.window_dir("w-0001") / "dispositions.json")["assignments"]
    assert {e["disposition"] for e in dispositions.values()} == {ACCEPTED}, dispositions
    promotion = read_json(program.window_dir("w-0001") / "promotion.json")
    assert promotion["scores"]["candidate_loss"] < promotion["scores"]["input_loss"]
    assert program.pointer()["revision"] == promotion["candidate_revision"]
    assert sorted(promotion["accepted_artifacts"]) == sorted(e["artifact_digest"] for e in dispositions.values())
    # The aggregate is reproducible: aggregating the stored artifacts again gives the same revision digest.
    states = [r.body["state"] for r in receipts(program, "w-0001") if r.kind == "window_state"]
    assert states == ["planned", "active", "sealed", "scored", "reconciled"]


def test_re_aggregating_the_stored_artifacts_reproduces_the_revision(program: Program, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(program.root, copy)
    window = copy / "windows" / "w-0001"
    for name in ("aggregate", "promotion.json"):
        shutil.rmtree(window / name) if (window / name).is_dir() else (window / name).unlink()
    record = read_json(window / "window.json")
    lines = (window / "receipts.jsonl").read_text().splitlines()
    keep = next(i for i, line in enumerate(lines) if parse_receipt(line).kind == "adapter_aggregation")
    (window / "receipts.jsonl").write_text("\n".join(lines[:keep]) + "\n")
    record.update(state="scored", receipts_head=parse_receipt(lines[keep - 1]).digest)
    (window / "window.json").write_text(json.dumps(record))
    from lit_psion.windows.aggregate import reconcile

    again = reconcile(copy, "w-0001")
    assert again["candidate_revision"] == read_json(program.window_dir("w-0001") / "promotion.json")[
        "candidate_revision"]  # fmt: skip


@pytest.fixture(scope="module")
def matrix(program: Program) -> dict[str, str]:
    """w-0002 with one contribution of each kind; returns assignment id -> the case it plays."""
    root = program.root
    plan = plan_window(root, contributors=12)
    open_window(root, plan.window_id)
    old_plan = program.plan("w-0001")
    cases = {}
    a = iter(plan.assignments)

    def take(case: str):
        assignment = next(a)
        cases[assignment.assignment_id] = case
        return assignment

    honest = take("honest")
    contribute(root, plan.window_id, honest.assignment_id)
    honest2 = take("honest")
    contribute(root, plan.window_id, honest2.assignment_id)
    # stale: trained (honestly) on w-0001's input revision, claims it
    stale = take("stale")
    tensors, summary = train_adapter(program, old_plan, stale)
    adversary.place(program, plan, stale, tensors, summary, claims={"input_revision": old_plan.input_revision})
    # flipped byte after upload
    flipped = take("flipped")
    path = contribute(root, plan.window_id, flipped.assignment_id)
    adversary.flip_byte(path / ADAPTER)
    # resubmitted: w-0001's accepted adapter bytes under a new, well-formed claim
    duplicate = take("duplicate")
    from safetensors.torch import load

    old = load((program.window_dir("w-0001") / "contributions" / "a00" / ADAPTER).read_bytes())
    old_meta = read_json(program.window_dir("w-0001") / "contributions" / "a00" / "contribution.json")
    adversary.place(program, plan, duplicate, old, old_meta["summary"])
    # NaN
    nan = take("nan")
    tensors, summary = train_adapter(program, plan, nan)
    adversary.place(program, plan, nan, adversary.with_nan(tensors), summary)
    # integer factors (were `non_finite`, a NaN or inf's reason)
    integer = take("integer")
    tensors, summary = train_adapter(program, plan, integer)
    adversary.place(program, plan, integer, {k: v.to(torch.int64) for k, v in tensors.items()}, summary)
    # shuffled labels
    shuffled = take("shuffled")
    tensors, summary = train_adapter(program, plan, shuffled, adversary.shuffled_labels())
    adversary.place(program, plan, shuffled, tensors, summary)
    # delta x50
    big = take("x50")
    tensors, summary = train_adapter(program, plan, big)
    adversary.place(program, plan, big, adversary.scaled(tensors, 50.0), summary)
    # wrong contributor: another contributor submits for this assignment
    wrong = take("wrong_contributor")
    tensors, summary = train_adapter(program, plan, wrong)
    adversary.place(program, plan, wrong, tensors, summary, contributor="mallory")
    # missing at the seal, and arriving after it
    missing = take("missing")
    late = take("late")
    late_tensors, late_summary = train_adapter(program, plan, late)
    seal(root, plan.window_id)
    adversary.place(program, plan, late, late_tensors, late_summary)
    promotion = close_window(root, plan.window_id)
    cases["promotion"] = promotion
    del missing
    return cases


EXPECTED = {
    "honest": (ACCEPTED, []),
    "stale": (REJECTED, ["stale_revision"]),
    "flipped": (REJECTED, ["digest_mismatch"]),
    "duplicate": (REJECTED, ["duplicate_artifact"]),
    "nan": (REJECTED, ["non_finite"]),
    "integer": (REJECTED, ["malformed"]),
    "shuffled": (QUARANTINED, ["held_out_regression"]),
    "x50": (QUARANTINED, ["delta_norm_outlier"]),
    "wrong_contributor": (REJECTED, ["wrong_contributor"]),
    "missing": (REPLAY_REQUIRED, ["missing_at_seal"]),
    "late": (REPLAY_REQUIRED, ["arrived_after_seal"]),
}


def test_every_contribution_gets_its_disposition(program: Program, matrix: dict) -> None:
    dispositions = read_json(program.window_dir("w-0002") / "dispositions.json")["assignments"]
    for aid, case in matrix.items():
        if aid == "promotion":
            continue
        entry = dispositions[aid]
        disposition, reasons = EXPECTED[case]
        assert entry["disposition"] == disposition, (case, entry)
        assert set(reasons) <= set(entry["reasons"]), (case, entry)
    disposed = {r.body["assignment_id"]: r.body for r in receipts(program, "w-0002")
                if r.kind == "adapter_contribution" and r.body["event"] == "disposed"}  # fmt: skip
    assert {aid: body["disposition"] for aid, body in disposed.items()} == {
        aid: e["disposition"] for aid, e in dispositions.items()}  # fmt: skip


def test_only_accepted_artifacts_are_aggregated(program: Program, matrix: dict) -> None:
    dispositions = read_json(program.window_dir("w-0002") / "dispositions.json")["assignments"]
    accepted = sorted(e["artifact_digest"] for e in dispositions.values() if e["disposition"] == ACCEPTED)
    assert len(accepted) == 2
    bodies = {r.kind: r.body for r in receipts(program, "w-0002")}
    assert sorted(bodies["adapter_aggregation"]["accepted_artifacts"]) == accepted
    assert sorted(bodies["policy_promotion"]["accepted_artifacts"]) == accepted
    assert set(bodies["adapter_aggregation"]["weights"]) == {aid for aid, e in dispositions.items()
                                                             if e["disposition"] == ACCEPTED}  # fmt: skip
    assert main(["window", "verify", str(program.root)]) == 0


def test_replay_required_slices_are_reassigned_exactly_once(program: Program, matrix: dict) -> None:
    previous = program.plan("w-0002")
    replayed = {a.assignment_id: a.slice for a in previous.assignments
                if matrix[a.assignment_id] in ("missing", "late")}  # fmt: skip
    plan = plan_window(program.root, contributors=2)
    replays = [a for a in plan.assignments if a.replay_of]
    assert sorted(a.replay_of for a in replays) == sorted(f"w-0002/{aid}" for aid in replayed)
    assert sorted(a.slice.index for a in replays) == sorted(s.index for s in replayed.values())
    fresh = {a.slice.index for a in plan.assignments if not a.replay_of}
    used = {a.slice.index for w in ("w-0001", "w-0002") for a in program.plan(w).assignments}
    assert not fresh & used  # every fresh slice is new
    # Nobody contributes: everything is replay_required again. The fresh slices get their one replay; the
    # replayed ones are not reassigned a second time.
    close_window(program.root, plan.window_id)
    again = plan_window(program.root, contributors=2)
    assert sorted(a.replay_of for a in again.assignments if a.replay_of) == sorted(
        f"{plan.window_id}/{a.assignment_id}" for a in plan.assignments if not a.replay_of)  # fmt: skip
    assert not {a.slice.index for a in again.assignments} & {s.index for s in replayed.values()}
    assert main(["window", "close", str(program.root), again.window_id]) == 0
    assert main(["window", "verify", str(program.root)]) == 0


def test_a_held_window_keeps_the_old_revision(base: Path, tmp_path: Path) -> None:
    # A permissive validator accepts poisoned deltas; the gate still refuses their aggregate.
    root = new_program(base, tmp_path / "held", validator={"norm_factor": 1e9, "max_regression": 1e9})
    program = Program(root)
    before = program.pointer()["revision"]
    plan = plan_window(root, contributors=3)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        tensors, summary = train_adapter(program, plan, assignment, adversary.shuffled_labels(1))
        adversary.place(program, plan, assignment, adversary.scaled(tensors, 3.0), summary)
    promotion = close_window(root, plan.window_id)
    assert promotion["decision"] == "hold" and "held_out_regression" in promotion["reasons"], promotion
    assert program.pointer()["revision"] == before
    assert plan_window(root).input_revision == before
    assert main(["window", "verify", str(root)]) == 0


# -- the CLI and its refusals ---------------------------------------------------------------


def test_window_commands_refuse_what_the_state_machine_forbids(program: Program, capsys: pytest.CaptureFixture,
                                                               matrix: dict) -> None:  # fmt: skip
    root = str(program.root)
    assert main(["window", "close", root, "w-0001"]) == 13  # reconciled: final
    assert "already 'reconciled'" in capsys.readouterr().err
    assert main(["window", "contribute", root, "w-0001", "a00"]) == 13
    assert "not active" in capsys.readouterr().err
    with pytest.raises(WindowStateError):
        seal(program.root, "w-0001")  # re-sealing


@pytest.mark.parametrize(("args", "code", "message"), [
    (["window", "init", "{tmp}/p", "--config", "{tmp}/missing.yaml", "--base", "{base}"], 2, "not found"),
    (["window", "init", "{tmp}/p", "--config", "{tmp}", "--base", "{base}"], 2, "is a directory, not a YAML file"),
    (["window", "init", "{tmp}/p", "--config", "{bad}", "--base", "{base}"], 2, "unknown window setting"),
    (["window", "init", "{tmp}/p", "--config", "{settings}", "--base", "{tmp}"], 2, "neither a run directory"),
    (["window", "plan", "{tmp}"], 2, "holds no window program"),
    (["window", "run", "{tmp}", "--contributors", "0"], 2, "--contributors must be >= 1"),
    (["window", "frobnicate"], 2, "invalid choice"),
])  # fmt: skip
def test_bad_window_arguments_get_one_line(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list,
                                           code: int, message: str) -> None:  # fmt: skip
    settings = write_settings(tmp_path / "settings.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("window:\n  contributers: 3\n")
    filled = [a.format(tmp=tmp_path, base=base, bad=bad, settings=settings) for a in args]
    assert main(filled) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_path_inside_a_program_names_the_program_and_a_missing_config_the_preset(
    program: Program, base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`window verify ROOT/windows/w-0001` was told to create a program with `window init`; `window init` run
    outside the checkout with --config configs/window_lora.yaml was told to start from that very path."""
    from tests.helpers import REPO_ROOT

    root = program.root.absolute()
    for given, says in ((root / "windows" / "w-0001", f"is inside window program {str(root)!r}; give that directory"),
                        (root / "program.json", f"is the program's record; give its directory, {str(root)!r}")):
        for command in ("verify", "status", "plan"):
            assert main(["window", command, str(given)]) == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert f"{str(given)!r} {says}" in line, line
    monkeypatch.chdir(tmp_path)
    assert main(["window", "init", "p", "--config", "configs/window_lora.yaml", "--base", str(base)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(f"not found; start from {REPO_ROOT.resolve() / 'configs' / 'window_lora.yaml'}"), line
    assert not (tmp_path / "p").exists()


def _edit_json(path: Path, change) -> None:
    record = read_json(path)
    change(record)
    path.write_text(json.dumps(record))


def _copy(program: Program, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(program.root, copy)
    return copy


@pytest.mark.parametrize(("tamper", "code"), [
    (lambda w: (w / "w-0001" / "dispositions.json").write_text(
        (w / "w-0001" / "dispositions.json").read_text().replace('"accepted"', '"rejected"', 1)), 5),
    (lambda w: (w / "w-0001" / "plan.json").write_text(
        (w / "w-0001" / "plan.json").read_text().replace('"lr": 0.02', '"lr": 0.03')), 5),
    (lambda w: (w / "w-0001" / "receipts.jsonl").write_text(
        "".join((w / "w-0001" / "receipts.jsonl").read_text().splitlines(keepends=True)[:-1])), 5),
    (lambda w: adversary.flip_byte(w / "w-0001" / "aggregate" / "candidate" / "model.safetensors"), 4),
    (lambda w: adversary.flip_byte(w / "w-0001" / "aggregate" / "stacked_adapter.safetensors"), 5),
    (lambda w: shutil.rmtree(w / "w-0001" / "contributions" / "a01"), 5),
    (lambda w: shutil.copytree(w / "w-0001" / "contributions" / "a00", w / "w-0001" / "contributions" / "a01",
                               dirs_exist_ok=True), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r["scores"].update(candidate_loss=0.1)), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r["weights"].update(a00=0.9)), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"].update(
        a99={**r["assignments"]["a00"]})), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a00"].update(
        reasons=["edited"])), 5),
    # Fields window verify did not compare (an adversary review): each passed, exit 0
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a01"].update(
        eligible=not r["assignments"]["a01"]["eligible"])), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a00"].update(
        contributor="mallory")), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a00"].update(
        metadata_digest="f" * 64)), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a00"].update(
        summary={"steps": 1})), 5),
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r.update(plan_digest="0" * 64)), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r.update(next_revision="0" * 64)), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r.update(previous_revision="0" * 64)), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r.update(window_id="w-0002")), 5),
    (lambda w: _edit_json(w / "w-0001" / "promotion.json", lambda r: r.update(candidate_checkpoint="elsewhere")), 5),
    (lambda w: (w.parent / "tokenizer.json").write_text((w.parent / "tokenizer.json").read_text() + " "), 5),
    # Neither compared before: a content digest feeds later windows' duplicate checks
    (lambda w: _edit_json(w / "w-0001" / "dispositions.json", lambda r: r["assignments"]["a00"].update(
        content_digest="0" * 64)), 5),
    (lambda w: _edit_json(w.parent / "pointer.json", lambda r: r.update(window="w-0007")), 5),
    (lambda w: _edit_json(w / "w-0001" / "window.json", lambda r: r.update(window_id="w-0002")), 5),
    (lambda w: (w.parent / "pointer.json").write_text(json.dumps(  # back to an older revision, consistently
        {**read_json(w.parent / "pointer.json"), "checkpoint": "windows/w-0001/aggregate/candidate",
         "revision": read_json(w / "w-0001" / "promotion.json")["candidate_revision"]})), 5),
])  # fmt: skip
def test_verify_refuses_tampered_records(program: Program, matrix: dict, tmp_path: Path, tamper, code: int) -> None:
    copy = _copy(program, tmp_path)
    assert main(["window", "verify", str(copy)]) == 0
    tamper(copy / "windows")
    assert main(["window", "verify", str(copy)]) == code


def test_a_second_coordinator_is_locked_out(program: Program, capsys: pytest.CaptureFixture, matrix: dict) -> None:
    from lit_psion.windows.coordinator import program_lock

    with program_lock(program.root, "another coordinator"):
        assert main(["window", "plan", str(program.root)]) == 8
    assert "locked" in capsys.readouterr().err


@pytest.mark.parametrize(("damage", "message", "commands"), [
    (lambda r, w: (r / "windows" / w / "dispositions.json").write_text('{"assign'), "cannot be read",
     ("verify", "status", "plan")),
    (lambda r, w: (r / "windows" / w / "promotion.json").unlink(), "is missing", ("verify",)),
    (lambda r, w: (r / "pointer.json").write_text("["), "cannot be read", ("verify", "status", "plan")),
    (lambda r, w: (r / "windows" / "w-0009").mkdir(), "but the next window is", ("verify", "status", "plan")),
    (lambda r, w: (r / "windows" / w / "receipts.jsonl").write_text(""), "end of log: truncated", ("verify",)),
    (lambda r, w: (r / "program.json").write_text(json.dumps({"settings": {}})), "is not the record it should be",
     ("verify", "status", "plan")),
    # An edited setting the next plan would adopt: targets no layer has (every close then failed after the seal,
    # wedging the window), or a learning rate of 100 taken silently. Settings are fixed at init.
    (lambda r, w: _edit_json(r / "program.json", lambda p: p["settings"]["lora"].update(targets=["bogus"])),
     "are not the ones `window init` recorded", ("verify", "status", "plan")),
    (lambda r, w: _edit_json(r / "program.json", lambda p: p["settings"]["budget"].update(lr=100)),
     "are not the ones `window init` recorded", ("verify", "plan")),
])  # fmt: skip
def test_damaged_records_are_one_line_exit_5(program: Program, matrix: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, damage, message: str,
                                             commands: tuple[str, ...]) -> None:  # fmt: skip
    copy = _copy(program, tmp_path)
    damage(copy, Program(copy).window_ids()[-1])  # plan reads the last window's records (verify reads them all)
    capsys.readouterr()
    for command in ([name, str(copy)] for name in commands):
        assert main(["window", *command]) == 5, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (command, err)


def test_the_data_settings_a_program_accepts_are_the_corpus_arguments() -> None:
    import inspect

    from lit_psion.datamodules.corpus import CorpusDataModule
    from lit_psion.windows.settings import corpus_settings

    arguments = set(inspect.signature(CorpusDataModule).parameters) - {"tokenizer", "tokenizer_file"}
    assert corpus_settings() == arguments
