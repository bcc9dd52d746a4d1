"""Across windows: a contribution that repeats an earlier window's accepted update is a duplicate however it is
re-encoded, and ``window verify`` holds every accepted contribution's files to the seal receipt."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.windows import ACCEPTED, REJECTED
from lit_psion.windows import adversary
from lit_psion.windows.contribute import ADAPTER, CONTRIBUTION, contribute
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import Program, plan_window
from lit_psion.windows.validate import content_digest, seal
from tests.windows.helpers import new_program

Tensors = dict[str, torch.Tensor]


def _other_factors(tensors: Tensors) -> Tensors:
    """B * 2 and A / 2: other bytes, other tensors, the same dW = B A."""
    return {name: value * 2 if name.endswith("lora_b") else value / 2 for name, value in tensors.items()}


# case -> (what a contributor submits in w-0002, given w-0001's accepted adapter of the same position; None: it
# trains honestly on its own slice), the disposition, and the same_delta_as evidence
CASES: dict[str, tuple[Callable[[Tensors], Tensors] | None, str, str | None]] = {
    "other_factors": (_other_factors, REJECTED, "w-0001/a00"),
    "fp16_recast": (lambda tensors: {name: value.half() for name, value in tensors.items()}, REJECTED, "w-0001/a01"),
    "rescaled_1.01": (lambda tensors: adversary.scaled(tensors, 1.01), REJECTED, "w-0001/a02"),
    "genuinely_different": (None, ACCEPTED, None),
}


@pytest.fixture(scope="module")
def replayed(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """w-0001: four honest contributors, accepted and held (so w-0002 trains on the same revision, where each
    of them passes every other check again); w-0002: the CASES in plan order, each at the position of the
    w-0001 contribution it re-encodes. Also a copy of the program as it was at w-0002's seal."""
    tmp = tmp_path_factory.mktemp("cross")
    root = new_program(base, tmp / "windows", gate={"min_delta": 1e9})
    program = Program(root)
    first = plan_window(root)
    open_window(root, first.window_id)
    for assignment in first.assignments:
        contribute(root, first.window_id, assignment.assignment_id)
    assert close_window(root, first.window_id)["decision"] == "hold"
    accepted = read_json(program.window_dir("w-0001") / "dispositions.json")["assignments"]
    assert {e["disposition"] for e in accepted.values()} == {ACCEPTED}, accepted
    plan = plan_window(root)
    open_window(root, plan.window_id)
    for assignment, (change, _, _) in zip(plan.assignments, CASES.values(), strict=True):
        if change is None:
            contribute(root, plan.window_id, assignment.assignment_id)
            continue
        old = program.window_dir("w-0001") / "contributions" / assignment.assignment_id
        summary = read_json(old / CONTRIBUTION)["summary"]
        adversary.place(program, plan, assignment, change(load((old / ADAPTER).read_bytes())), summary)
    seal(root, plan.window_id)
    shutil.copytree(root, tmp / "at_seal")
    close_window(root, plan.window_id)
    return {"root": root, "at_seal": tmp / "at_seal"}


@pytest.mark.parametrize("case", list(CASES))
def test_an_earlier_windows_update_resubmitted_is_a_duplicate(replayed: dict[str, Path], case: str) -> None:
    program = Program(replayed["root"])
    aid = program.plan("w-0002").assignments[list(CASES).index(case)].assignment_id
    entry = read_json(program.window_dir("w-0002") / "dispositions.json")["assignments"][aid]
    _, disposition, original = CASES[case]
    assert entry["disposition"] == disposition, (case, entry)
    assert entry["evidence"].get("same_delta_as") == original, (case, entry)
    assert ("duplicate_artifact" in entry["reasons"]) == (original is not None), (case, entry)
    if original is not None:  # it is not the same bytes or tensors: only the delta check can catch it
        old = read_json(program.window_dir("w-0001") / "dispositions.json")["assignments"][original[-3:]]
        assert entry["artifact_digest"] != old["artifact_digest"]
        assert entry["content_digest"] != old["content_digest"]
    assert main(["window", "verify", str(program.root)]) == 0


def test_an_earlier_accepted_adapter_that_is_gone_refuses_the_close(
    replayed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "windows"
    shutil.copytree(replayed["at_seal"], copy)
    gone = copy / "windows" / "w-0001" / "contributions" / "a03" / ADAPTER
    gone.unlink()
    capsys.readouterr()
    assert main(["window", "close", str(copy), "w-0002"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(gone) in err[0] and "restore it from a backup" in err[0], err
    assert Program(copy).state("w-0002") == "sealed"


def _content_of(root: Path, window: str, aid: str) -> str:
    return content_digest(load((root / "windows" / window / "contributions" / aid / ADAPTER).read_bytes()))


@pytest.mark.parametrize("edit", [
    # w-0001's record claims the honest w-0002/a03's tensors: a03 would be a "duplicate_artifact"
    lambda root, entries: entries["a00"].update(content_digest=_content_of(root, "w-0002", "a03")),
    # w-0001's a00 "rejected": the re-encoded copy of it, w-0002/a00, would not be compared with it
    lambda root, entries: entries["a00"].update(disposition=REJECTED),
])  # fmt: skip
def test_later_windows_judge_duplicates_by_the_earlier_receipts_not_an_edited_record(
    replayed: dict[str, Path], tmp_path: Path, edit
) -> None:
    copy = tmp_path / "windows"
    shutil.copytree(replayed["at_seal"], copy)
    path = copy / "windows" / "w-0001" / "dispositions.json"
    record = read_json(path)
    edit(copy, record["assignments"])
    path.write_text(json.dumps(record))
    close_window(copy, "w-0002")
    genuine = read_json(replayed["root"] / "windows" / "w-0002" / "dispositions.json")["assignments"]
    judged = read_json(copy / "windows" / "w-0002" / "dispositions.json")["assignments"]
    assert {a: e["disposition"] for a, e in judged.items()} == {a: e["disposition"] for a, e in genuine.items()}
    assert judged["a00"]["evidence"]["same_delta_as"] == "w-0001/a00"


def _edit_tokens(path: Path) -> None:
    meta = read_json(path)
    meta["summary"]["tokens"] -= 1  # a smaller claim: a smaller aggregation weight, were it re-aggregated
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("window", "aid", "harm", "code"), [
    ("w-0001", "a00", _edit_tokens, 5),
    ("w-0002", "a03", _edit_tokens, 5),
    ("w-0001", "a02", Path.unlink, 5),
    ("w-0001", "a01", lambda p: p.write_bytes(p.read_bytes() + b"\n"), 5),  # the same JSON, other bytes
    ("w-0002", "a00", _edit_tokens, 0),  # rejected: never aggregated, its metadata is not held to the seal
])  # fmt: skip
def test_verify_holds_accepted_contribution_metadata_to_the_seal(
    replayed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, window: str, aid: str, harm, code: int
) -> None:
    copy = tmp_path / "windows"
    shutil.copytree(replayed["root"], copy)
    assert main(["window", "verify", str(copy)]) == 0
    path = copy / "windows" / window / "contributions" / aid / CONTRIBUTION
    harm(path)
    capsys.readouterr()
    assert main(["window", "verify", str(copy)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    if code:
        assert len(err) == 1 and str(path) in err[0] and f"accepted contribution {aid}" in err[0], err
