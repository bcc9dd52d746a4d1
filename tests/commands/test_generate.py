"""``generate``: samples from every kind of model lit_psion writes, each verified before it is loaded."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import fit

ADAPTER = ("--model", "lit_psion.models.AdapterLM", "--model.init_args.optimizer.lr", "0.02")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    assert fit("--trainer.default_root_dir", str(root / "base"), "--trainer.max_steps", "6") == 0
    base = root / "base" / read_latest(root / "base")
    assert fit("--trainer.default_root_dir", str(root / "tuned"), "--trainer.max_steps", "3", *ADAPTER,
               "--model.init_args.base_checkpoint", str(base), "--data.tokenizer_file",
               str(base / "tokenizer.json")) == 0  # fmt: skip
    tuned = root / "tuned" / read_latest(root / "tuned")
    assert main(["adapter", "export", str(tuned)]) == 0
    assert main(["adapter", "merge", str(tuned / "adapter"), "--base", str(base), "--out", str(root / "merged")]) == 0
    return {"base": base, "tuned": tuned, "merged": root / "merged"}


def _sample(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_run_samples_the_same_text_for_the_same_seed(runs: dict, capsys: pytest.CaptureFixture) -> None:
    code, first, _ = _sample(capsys, str(runs["base"]), "--prompt", "The ", "--tokens", "30", "--seed", "1")
    assert code == 0 and first.startswith("The ") and len(first.strip()) > len("The ")
    assert _sample(capsys, str(runs["base"]), "--prompt", "The ", "--tokens", "30", "--seed", "1")[1] == first
    assert _sample(capsys, str(runs["base"]), "--prompt", "The ", "--tokens", "30", "--seed", "2")[1] != first


def test_several_samples_are_told_apart_and_control_characters_are_escaped(
    runs: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two samples were printed back to back; a sampled NUL or ESC was printed raw (a log grep took for binary)."""
    from lit_psion.commands import generate

    code, out, _ = _sample(capsys, str(runs["base"]), "--prompt", "The ", "--tokens", "10", "--samples", "2")
    assert code == 0 and out.startswith("--- sample 1 of 2 ---\nThe ") and "\n--- sample 2 of 2 ---\nThe " in out
    monkeypatch.setattr(generate, "sample", lambda *args: ["a\x00b\x1b[2Jc\td\ne\x7f"])
    assert _sample(capsys, str(runs["base"]))[1] == "a\\x00b\\x1b[2Jc\td\ne\\x7f\n"


def test_checkpoints_adapter_runs_and_merged_adapters_sample(
    runs: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = sorted((runs["base"] / "checkpoints").glob("step-*"))[-1]
    assert _sample(capsys, str(step), "--tokens", "5")[0] == 0  # the run's tokenizer, found from the checkpoint
    monkeypatch.chdir(runs["base"].parent)  # a relative path was "not inside a run" (compared with a resolved one)
    assert _sample(capsys, str(step.relative_to(runs["base"].parent)), "--tokens", "5")[0] == 0
    monkeypatch.undo()
    greedy = ("--tokens", "20", "--temperature", "0", "--prompt", "Th")
    code, tuned, _ = _sample(capsys, str(runs["tuned"]), *greedy)
    assert code == 0
    tokenizer = str(runs["base"] / "tokenizer.json")
    code, merged, _ = _sample(capsys, str(runs["merged"]), *greedy, "--tokenizer", tokenizer)
    assert code == 0 and merged == tuned  # the merged model is the adapter run's model
    assert _sample(capsys, str(runs["merged"]), "--tokens", "5")[0] == 2  # no tokenizer of its own: asks for one


def test_a_tampered_model_or_a_foreign_tokenizer_is_refused(runs: dict, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    merged = tmp_path / "merged"
    shutil.copytree(runs["merged"], merged)
    data = bytearray((merged / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (merged / "model.safetensors").write_bytes(bytes(data))
    code, _, err = _sample(capsys, str(merged), "--tokenizer", str(runs["base"] / "tokenizer.json"))
    assert code == 4 and "is not the merged model" in err
    foreign = tmp_path / "tokenizer.json"
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(foreign))
    swapped = json.loads((runs["base"] / "tokenizer.json").read_text())
    vocab = swapped["model"]["vocab"]
    first, second = list(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    for other in (foreign, tmp_path / "swapped.json"):  # another size, or the same size with two ids swapped
        code, _, err = _sample(capsys, str(runs["base"]), "--tokenizer", str(other))
        assert code == 2 and "is not the tokenizer" in err and "leave --tokenizer out" in err, err
    assert _sample(capsys, str(runs["base"]), "--tokenizer", str(runs["base"] / "tokenizer.json"))[0] == 0
    for other in (foreign, tmp_path / "swapped.json"):  # a merged model has none of its own: its merge.json's
        code, _, err = _sample(capsys, str(runs["merged"]), "--tokenizer", str(other))  # record (it sampled with the
        assert code == 2 and "is not the tokenizer the merged model's base was trained with" in err, err  # swapped)
    legacy = tmp_path / "legacy"  # merged before the tokenizer was recorded: held to the vocabulary size alone
    shutil.copytree(runs["merged"], legacy)
    record = json.loads((legacy / "merge.json").read_text())
    del record["tokenizer_sha256"]
    with safe_open(legacy / "model.safetensors", "pt") as handle:
        header = {k: v for k, v in handle.metadata().items() if k != "lit_psion.merged_tokenizer_sha256"}
        weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    (legacy / "model.safetensors").write_bytes(data := save(weights, metadata=header))
    record["model_sha256"] = hashlib.sha256(data).hexdigest()
    (legacy / "merge.json").write_text(json.dumps(record))
    _receipt_merged(legacy, record)  # as that merge's own receipt records it
    code, _, err = _sample(capsys, str(legacy), "--tokenizer", str(foreign))
    assert code == 2 and "has 2 tokens" in err
    for flag, value in (("--tokens", "0"), ("--tokens", "100001"), ("--samples", "0"), ("--samples", str(10**12))):
        code, _, err = _sample(capsys, str(runs["base"]), flag, value)  # 10**12 samples: their ids alone, 8 TB
        assert code == 2 and f"{flag} must be in 1.." in err and f"got {value}" in err, err


def _receipt_merged(merged: Path, record: dict) -> None:
    """Append the merge receipt a merge writing ``record`` would have appended to ``merged``'s log."""
    from lit_psion.adapters import _output_log, _receipt
    from lit_psion.core.receipts import AdapterExportReceipt

    log = _output_log(merged, ("model.safetensors", "merge.json"), "a merge")
    _receipt(log, AdapterExportReceipt(action="merge", adapter_digest=record["adapter_sha256"],
                                       base_checkpoint_digest=record["base_checkpoint_digest"],
                                       output_digest=record["model_sha256"],
                                       max_abs_logit_diff=record["max_abs_logit_diff"]))  # fmt: skip


def _set(key: str, value: object) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        record["decoder_config"][key] = value

    return edit


MERGE_RECORD_EDITS = [  # (what is done to merge.json, what the one line says) -- each exit 4, never a traceback
    (_set("n_head", 8), "is not the one the merged weights were written with"),  # same shapes: it sampled, silently
    (_set("n_layer", 1), "is not the one the merged weights were written with"),  # a size mismatch: it crashed
    (lambda record: record.pop("decoder_config"), "records no decoder_config"),
    (None, "cannot be read (JSONDecodeError)"),
    (lambda record: record.update(tokenizer_sha256="0" * 64),  # set to another tokenizer's: that one was taken
     "tokenizer_sha256 is not the one the merged weights were written with"),
    (lambda record: record.pop("tokenizer_sha256"), "tokenizer_sha256 is not the one"),  # taken any tokenizer
]


@pytest.mark.parametrize(("edit", "says"), MERGE_RECORD_EDITS,
                         ids=["n_head", "n_layer", "no config", "not JSON", "tokenizer edited", "tokenizer deleted"])
def test_an_edited_merge_record_is_refused(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           edit: Callable[[dict], None] | None, says: str) -> None:  # fmt: skip
    merged = tmp_path / "merged"
    shutil.copytree(runs["merged"], merged)
    if edit is None:
        (merged / "merge.json").write_text("{not json")
    else:
        record = json.loads((merged / "merge.json").read_text())
        edit(record)
        (merged / "merge.json").write_text(json.dumps(record))
    code, _, err = _sample(capsys, str(merged), "--tokenizer", str(runs["base"] / "tokenizer.json"))
    assert code == 4 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("flag", "value", "says"), [("--temperature", "nan", "finite number >= 0"),
                                                     ("--seed", str(10**23), "--seed must be in 0.."),
                                                     ("--prompt", b"ab\xffcd".decode("utf-8", "surrogateescape"),
                                                      "--prompt is not UTF-8 text (byte b'\\xff' at character 2)"),
                                                     ])  # fmt: skip
def test_a_sampling_setting_out_of_range_is_one_line(runs: dict, capsys: pytest.CaptureFixture, flag: str, value: str,
                                                     says: str) -> None:  # fmt: skip
    code, _, err = _sample(capsys, str(runs["base"]), flag, value)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_an_adapter_run_is_not_a_base(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """It was a jsonargparse dump of a state_dict mismatch (exit 1)."""
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1", *ADAPTER,
               "--model.init_args.base_checkpoint", str(runs["tuned"]), "--data.tokenizer_file",
               str(runs["base"] / "tokenizer.json")) == 4  # fmt: skip
    assert "is an adapter run (AdapterLM), not a base model" in capsys.readouterr().err


def test_a_run_whose_tokenizer_was_edited_is_refused(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two vocabulary entries swapped: same size, valid JSON; generate sampled other text with exit 0 while doctor
    FAILed the file."""
    import json

    run = tmp_path / runs["base"].name
    shutil.copytree(runs["base"], run)
    record = json.loads((run / "tokenizer.json").read_text())
    vocab = record["model"]["vocab"]
    first, second = list(vocab)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (run / "tokenizer.json").write_text(json.dumps(record))
    code, out, err = _sample(capsys, str(run), "--tokens", "5")
    assert code in (3, 5) and "tokenizer" in err and not out, (code, err)


OTHER_FAMILIES = [  # (preset, its arguments for a tiny run, what generate says instead)
    ("configs/mosaic_commitment_cpu.yaml", ("--data.init_args.n_train", "64", "--data.init_args.n_val", "16"),
     "a MosaicLM run predicts events: python -m lit_psion events predict"),
    ("configs/graph_core_oscillators.yaml", ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6",
                                             "--data.init_args.n_train", "16", "--data.init_args.window", "8"),
     "a GraphCore run models dynamics, not text"),
]  # fmt: skip


@pytest.mark.parametrize(("preset", "small", "says"), OTHER_FAMILIES, ids=["mosaic", "graph-core"])
def test_a_run_of_another_family_is_named_with_its_own_command(
    tmp_path: Path, capsys: pytest.CaptureFixture, preset: str, small: tuple, says: str
) -> None:
    """A MOSAIC run was "lacks weights the model needs" (as if untrusted); a graph-core run was told to use events
    predict. Exit 4, a checkpoint of another model family, as `events predict --ckpt` and `--ckpt_path` say it."""
    from lit_psion.core.run import read_latest
    from tests.helpers import fit

    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", *small, config=preset) == 0
    code, _, err = _sample(capsys, str(tmp_path / read_latest(tmp_path)), "--tokens", "3")
    assert code == 4 and says in err, err


@pytest.mark.parametrize(("prompt", "named"), [("ROMEO€:", ["'€'"]), ("€€ and ☃", ["'€'", "'☃'"]), ("The ", [])])
def test_a_prompt_the_tokenizer_cannot_read_is_warned_about(runs: dict, capsys: pytest.CaptureFixture, prompt: str,
                                                            named: list[str]) -> None:  # fmt: skip
    """A character tokenizer reads what it never saw as its unknown token, which prints as nothing: the sample
    then seemed to drop part of the prompt in silence. It still samples, and says which characters it cannot read."""
    code, out, err = _sample(capsys, str(runs["base"]), "--prompt", prompt, "--tokens", "5")
    assert code == 0 and out.strip()
    warnings = [line for line in err.splitlines() if "has no token for" in line]
    assert len(warnings) == (1 if named else 0)
    for name in named:
        assert name in warnings[0]


@pytest.mark.parametrize("temperature", ["1e-45", "5e-324", "1e-300"])
def test_a_temperature_near_zero_samples_as_greedy_does(runs: dict, capsys: pytest.CaptureFixture,
                                                        temperature: str) -> None:  # fmt: skip
    """Logits divided by it overflowed to inf and softmax gave NaN: exit 1 (and, in GenerateSample at the end of a
    fit, a trained run marked failed). Its limit is greedy."""
    args = (str(runs["base"]), "--tokens", "20", "--prompt", "Th")
    code, greedy, _ = _sample(capsys, *args, "--temperature", "0")
    assert code == 0
    assert _sample(capsys, *args, "--temperature", temperature) == (0, greedy, "")


def test_a_sample_longer_than_generate_takes_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A typo such as 10**9 would have hung the end of a trained fit."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+=lit_psion.callbacks.GenerateSample", "--trainer.callbacks.max_new_tokens",
            str(10**9)]  # fmt: skip
    assert main(args) == 2
    assert "max_new_tokens must be in [0, 100,000]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_path_generate_does_not_read_is_named_with_what_it_reads(runs: dict, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Each was "neither a run directory nor a checkpoint directory", leaving out the merged and window forms, a path
    that does not exist, and what to do with an exported adapter."""
    for path, says in ((runs["tuned"] / "adapter", "is an exported adapter, which holds no base weights"),
                       (tmp_path / "nowhere", "'" + str(tmp_path / "nowhere") + "' does not exist"),
                       (runs["base"] / "checkpoints", "a merged adapter (adapter merge --out) or a window program")):
        code, _, err = _sample(capsys, str(path), "--tokens", "2")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_a_sample_prompt_the_tokenizer_cannot_read_is_warned_about_at_the_end_of_a_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """GenerateSample read what its tokenizer never saw as the unknown token, silently (generate warns)."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_steps", "2", "--trainer.callbacks+=lit_psion.callbacks.GenerateSample",
            "--trainer.callbacks.prompt=\u20ac the", "--trainer.callbacks.max_new_tokens=3"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    assert "the tokenizer has no token for '\u20ac' in GenerateSample's prompt" in capsys.readouterr().err


@pytest.mark.parametrize("lost", ["run.json", "run.json and receipts.jsonl"])
def test_a_run_that_lost_its_run_json_is_said_to_have_lost_it(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture, lost: str
) -> None:
    """generate said the run directory "is none of them" (exit 2), where every other command names the missing
    run.json (exit 5)."""
    run = shutil.copytree(runs["base"], tmp_path / runs["base"].name)
    (run / "run.json").unlink()
    if lost != "run.json":
        (run / "receipts.jsonl").unlink()
    code, _, err = _sample(capsys, str(run))
    assert code == 5 and "no run.json" in err and "is none of them" not in err, err
