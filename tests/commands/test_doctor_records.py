"""doctor on run records edited in ways it missed or died on: a non-finite number in data_manifest.json (exit 1,
"canonical JSON cannot encode the non-finite float nan"), and run.json's model_signature deleted (exit 0, though a
changed one fails)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    return root / read_latest(root)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_number_in_the_data_manifest_is_a_fail_not_a_crash(
    run: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture
) -> None:
    copy = Path(shutil.copytree(run, tmp_path / run.name))
    text = (copy / "data_manifest.json").read_text()
    assert '"val_fraction": 0.1' in text
    (copy / "data_manifest.json").write_text(text.replace('"val_fraction": 0.1', f'"val_fraction": {value}'))
    capsys.readouterr()
    assert main(["doctor", str(copy)]) == 3
    said = capsys.readouterr()
    assert "unexpected error" not in said.err and "FAIL token cache: data_manifest.json cannot be hashed" in said.out


def test_a_model_signature_deleted_from_run_json_fails_as_a_changed_one_does(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for change in ("deleted", "changed"):
        copy = Path(shutil.copytree(run, tmp_path / change / run.name))
        record = json.loads((copy / "run.json").read_text())
        if change == "deleted":
            del record["model_signature"]
        else:
            record["model_signature"] = record["model_signature"].upper()
        (copy / "run.json").write_text(json.dumps(record))
        capsys.readouterr()
        assert main(["doctor", str(copy)]) == 5, change
        assert "model_signature is not the one the last training_run receipt records" in capsys.readouterr().out


def test_a_receipt_whose_config_digest_is_not_text_is_a_fail_not_a_crash(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """run.json is held to the last training_run receipt's config_digest even when the chain fails: a number there
    made an early form of that check exit 1 ('int' object is not subscriptable)."""
    copy = Path(shutil.copytree(run, tmp_path / run.name))
    lines = (copy / "receipts.jsonl").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "training_run")
    receipt = json.loads(lines[last])
    receipt["body"]["config_digest"] = 12345
    lines[last] = json.dumps(receipt)
    (copy / "receipts.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["doctor", str(copy)]) == 5
    said = capsys.readouterr()
    assert "unexpected error" not in said.err and "FAIL receipts.jsonl" in said.out, said.out


@pytest.mark.parametrize("name", ["run.json", "config.yaml", "data_manifest.json", "tokenizer.json", "metrics.csv",
                                  "receipts.jsonl"])  # fmt: skip
def test_a_record_made_a_symlink_fails_whichever_it_is(run: Path, tmp_path: Path, name: str,
                                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    # The same bytes, through a link to a file outside the run: four of them passed, metrics.csv ended doctor in
    # one error line with no verdicts, and only the receipt log was a verdict
    copy = Path(shutil.copytree(run, tmp_path / run.name))
    outside = tmp_path / f"outside-{name}"
    (copy / name).rename(outside)
    (copy / name).symlink_to(outside)
    capsys.readouterr()
    assert main(["doctor", str(copy)]) == 5
    said = capsys.readouterr()
    (line,) = [line for line in said.out.splitlines() if line.startswith(f"FAIL {name}:")]
    assert "symlink" in line, line
    assert said.out.count("\n") >= 10 and "unexpected error" not in said.err  # every verdict printed
