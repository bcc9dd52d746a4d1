"""AdapterLM: frozen base, adapter-only training, exact resume, refusals, and the promotion gate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from lit_psion.core import read_json, sha256_bytes, sha256_file, sha256_json
from lit_psion.core.run import read_latest, write_latest
from lit_psion.models import DecoderLM
from tests.helpers import assert_tree_equal, fit, latest_checkpoint
from tests.models.adapter_forging import forged

N = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    assert fit("--trainer.default_root_dir", str(root)) == 0
    return root / read_latest(root)


def adapter_args(base: Path, root: Path, *extra: str, min_delta: float | None = 0.0) -> tuple[str, ...]:
    gate = root.parent / f"{root.name}-gate.json"
    init_args = {} if min_delta is None else {"min_delta": min_delta}  # None: the gate's default
    gate.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "lit_psion.callbacks.PromotionGate", "init_args": init_args}]}}))  # fmt: skip
    return (
        "--config", str(gate), "--model", "lit_psion.models.AdapterLM", "--model.init_args.base_checkpoint",
        str(base), "--data.tokenizer_file", str(base / "tokenizer.json"), "--trainer.default_root_dir", str(root),
        "--model.init_args.optimizer.lr", "0.02", "--model.init_args.optimizer.decay_steps", str(N), *extra,
    )  # fmt: skip


@pytest.mark.parametrize("targets", [["lm_head"], ["attn_qkv", "attn_out", "mlp_in", "mlp_out"]], ids=len)
def test_only_adapters_train_and_the_gate_promotes_a_gain(base: Path, tmp_path: Path, targets: list[str]) -> None:
    root = tmp_path / "ft"
    assert fit(*adapter_args(base, root, "--model.init_args.targets", json.dumps(targets))) == 0
    run = root / read_latest(root)
    tuned, original = latest_checkpoint(root)["state_dict"], latest_checkpoint(base.parent)["state_dict"]
    for key, value in original.items():  # every base weight, bitwise (tied embedding included)
        wrapped = key.replace(".head.", ".head.base.").replace(".qkv.", ".qkv.base.").replace(".proj.", ".proj.base.")
        wrapped = wrapped.replace(".gate_up.", ".gate_up.base.").replace(".down.", ".down.base.")
        assert torch.equal(tuned.get(wrapped, tuned.get(key)), value), key
    assert any("lora_b" in k and tuned[k].abs().sum() > 0 for k in tuned)  # the adapters did learn
    promotion = read_json(run / "promotion.json")
    assert promotion["decision"] == "promote" and promotion["candidate_loss"] < promotion["base_loss"]
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    receipt = next(r["body"] for r in chain if r["kind"] == "policy_promotion")
    assert receipt["decision"] == "promote" and receipt["previous_revision"].startswith("base:")


def test_the_gate_holds_without_enough_gain(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "ft"
    assert fit(*adapter_args(base, root, min_delta=100.0)) == 0
    promotion = read_json(root / read_latest(root) / "promotion.json")
    assert (promotion["decision"], promotion["reasons"]) == ("hold", ["below_min_delta"])


def test_the_gate_holds_an_adapter_that_did_not_learn(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "ft"
    assert fit(*adapter_args(base, root, "--model.init_args.optimizer.lr", "1e-9", min_delta=None)) == 0
    promotion = read_json(root / read_latest(root) / "promotion.json")
    assert abs(promotion["improvement"]) < 1e-4  # B barely moved: the candidate is the base
    assert (promotion["decision"], promotion["reasons"]) == ("hold", ["below_min_delta"])


MUON_ON_ADAPTERS = ("--model.init_args.optimizer.name", "muon", "--model.init_args.muon_on_adapters", "true")


@pytest.mark.parametrize("optimizer", [(), MUON_ON_ADAPTERS], ids=["adamw", "muon-on-adapters"])
def test_adapter_fine_tune_resumes_bitwise(base: Path, tmp_path: Path, optimizer: tuple[str, ...]) -> None:
    """Muon on the adapters used to exit 1 (AdamW was built over no parameters at all)."""
    full, split = tmp_path / "full", tmp_path / "split"
    assert fit(*adapter_args(base, full, *optimizer)) == 0
    assert fit(*adapter_args(base, split, *optimizer), "--trainer.max_steps", "7") == 0
    assert fit(*adapter_args(base, split, *optimizer), "--ckpt_path", "last") == 0
    a, b = latest_checkpoint(full), latest_checkpoint(split)
    assert any("lora_b" in k and v.abs().sum() > 0 for k, v in a["state_dict"].items())  # the adapters learned
    assert_tree_equal(b["state_dict"], a["state_dict"], "state_dict")
    assert_tree_equal(b["optimizer_states"], a["optimizer_states"], "optimizer_states")


def test_a_different_vocabulary_is_refused(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [a for a in adapter_args(base, tmp_path / "ft") if a not in ("--data.tokenizer_file",
                                                                           str(base / "tokenizer.json"))]  # fmt: skip
    assert fit(*args, "--data.tokenizer", "bpe", "--data.vocab_size", "300") == 2
    assert "use the base run's tokenizer" in capsys.readouterr().err


def test_a_tokenizer_of_the_same_size_but_other_ids_is_refused(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only the vocabulary's size was compared: a tokenizer with two ids swapped fine-tuned and was promoted."""
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    swapped = tmp_path / "tokenizer.json"
    swapped.write_text(json.dumps(tokenizer))
    args = [swapped if a == str(base / "tokenizer.json") else a for a in adapter_args(base, tmp_path / "ft")]
    assert fit(*map(str, args)) == 2
    assert "is not the one the base run trained with" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists() or not list((tmp_path / "ft").glob("*/run.json"))


def test_a_tampered_base_is_refused(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    pointed = copy / "checkpoints" / read_json(copy / "checkpoints" / "pointer.json")["checkpoint"]
    for step in copy.glob("checkpoints/step-*"):
        weights = step / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    assert fit(*adapter_args(copy, tmp_path / "ft")) == 4
    assert "is corrupt" in capsys.readouterr().err and pointed.exists()


@pytest.fixture(scope="module")
def tuned(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tuned")
    assert fit(*adapter_args(base, root, "--model.init_args.targets", '["lm_head", "attn_qkv"]')) == 0
    return root / read_latest(root)


def test_export_inspect_merge_round_trip(
    base: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lit_psion.cli import main

    assert main(["adapter", "export", str(tuned), "--out", str(tmp_path / "adapter")]) == 0
    meta = read_json(tmp_path / "adapter" / "adapter.json")
    assert (meta["targets"], meta["rank"], meta["alpha"]) == (["lm_head", "attn_qkv"], 8, 16.0)
    assert main(["adapter", "export", str(tuned)]) == 0  # into the run's own adapter/
    capsys.readouterr()
    assert main(["adapter", "inspect", str(tuned)]) == 2  # the run, not its adapter: the hint names it
    assert f"its adapter/ does: give {str(tuned / 'adapter')!r}" in capsys.readouterr().err
    assert main(["adapter", "inspect", str(tmp_path / "adapter")]) == 0
    assert meta["adapter_sha256"] in capsys.readouterr().out
    assert main(["adapter", "merge", str(tmp_path / "adapter"), "--base", str(base), "--out", str(tmp_path / "m")]) == 0
    record = read_json(tmp_path / "m" / "merge.json")
    assert record["max_abs_logit_diff"] < 1e-4 and record["decoder_config"]["tie_embeddings"] is False
    from lit_psion.core.chain import verify_log

    assert verify_log(tmp_path / "m" / "receipts.jsonl").ok


def test_merge_onto_another_base_names_both_digests(tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lit_psion.cli import main

    assert main(["adapter", "export", str(tuned), "--out", str(tmp_path / "adapter")]) == 0
    expected = read_json(tmp_path / "adapter" / "adapter.json")["base_checkpoint_digest"]
    assert fit("--trainer.default_root_dir", str(tmp_path / "other"), "--trainer.max_steps", "2",
               "--seed_everything", "7") == 0  # fmt: skip
    other = tmp_path / "other" / read_latest(tmp_path / "other")
    for base, says in ((other, "merge onto the base it was trained on"), (tuned, "is an adapter run (AdapterLM)")):
        capsys.readouterr()
        assert main(["adapter", "merge", str(tmp_path / "adapter"), "--base", str(base), "--out",
                     str(tmp_path / "m")]) == 4  # fmt: skip
        error = capsys.readouterr().err
        assert says in error and (expected in error or base == tuned)
        assert not (tmp_path / "m").exists()
    data = bytearray((tmp_path / "adapter" / "adapter.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "adapter" / "adapter.safetensors").write_bytes(bytes(data))
    assert main(["adapter", "inspect", str(tmp_path / "adapter")]) == 4


# -- adapter.json and adapter.safetensors bind each other --------------------------------------------


@pytest.fixture(scope="module")
def exported(tuned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lit_psion.cli import main

    out = tmp_path_factory.mktemp("exported") / "adapter"
    assert main(["adapter", "export", str(tuned), "--out", str(out)]) == 0
    return out


def _edit(field: str, value: object, rerecord: bool = False) -> Callable[[Path], None]:
    """Set (or, with value DELETE, remove) one field of adapter.json; ``rerecord`` also fixes metadata_sha256."""

    def edit(adapter: Path) -> None:
        meta = read_json(adapter / "adapter.json")
        if value is DELETE:
            del meta[field]
        else:
            meta[field] = value
        if rerecord:
            meta["metadata_sha256"] = sha256_json({k: v for k, v in meta.items() if k != "metadata_sha256"})
        (adapter / "adapter.json").write_text(json.dumps(meta, indent=2))

    return edit


def _flip_tensor_byte(adapter: Path) -> None:
    data = bytearray((adapter / "adapter.safetensors").read_bytes())
    data[-1] ^= 1
    (adapter / "adapter.safetensors").write_bytes(bytes(data))


def _nan_tensor_rerecorded(adapter: Path) -> None:
    """A NaN in one tensor, with the header copy kept and both digests recomputed: only finiteness catches it."""
    with safe_open(adapter / "adapter.safetensors", "pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    next(iter(tensors.values())).view(-1)[0] = float("nan")
    data = save(tensors, metadata=header)
    (adapter / "adapter.safetensors").write_bytes(data)
    _edit("adapter_sha256", sha256_bytes(data), rerecord=True)(adapter)


DELETE = object()
TAMPERED = {  # case: (tamper, what the one error line must say)
    "alpha-edited": (_edit("alpha", 32.0), ["was edited after export (alpha: exported 16.0, now 32.0):"]),
    "rank-edited": (_edit("rank", 4), ["rank: exported 8, now 4"]),
    "targets-edited": (_edit("targets", ["lm_head"]), ["targets: exported ['lm_head', 'attn_qkv'], now ['lm_head']"]),
    "base-digest-edited": (_edit("base_checkpoint_digest", "0" * 64), ["base_checkpoint_digest: exported '"]),
    "adapter-sha256-edited": (_edit("adapter_sha256", "0" * 64), ["adapter_sha256: now " + "0" * 64]),
    "field-deleted": (_edit("dtype", DELETE), ["lacks field(s) 'dtype'"]),
    "not-json": (lambda a: (a / "adapter.json").write_text("{"), ["is not valid JSON"]),
    "tensor-byte-flipped": (_flip_tensor_byte, ["adapter.safetensors' is corrupt: expected sha256"]),
    "alpha-edited-digest-rerecorded": (_edit("alpha", 32.0, rerecord=True),
                                       ["does not match the metadata exported in", "alpha: exported 16.0, now 32.0"]),
    "nan-tensor-digests-rerecorded": (_nan_tensor_rerecorded, ["holds non-finite values in 1 tensor(s)"]),
    "alpha-a-string-forged": (forged("alpha", "16"), ["alpha is '16', not a number in (0, 1e+06]"]),
    "rank-a-boolean-forged": (forged("rank", True), ["rank is True, not a positive integer"]),
    "rank-zero-forged": (forged("rank", 0), ["rank is 0, not a positive integer"]),
    "targets-a-string-forged": (forged("targets", "lm_head"), ["targets is 'lm_head', not a list of LoRA targets"]),
    "config-a-list-forged": (forged("decoder_config", [1]), ["decoder_config is [1], not a decoder config"]),
    "int-tensors-forged": (forged(tensors=lambda w: {k: v.to(torch.int64) for k, v in w.items()}),
                           ["as torch.int64, not floating point"]),
    "rank-claimed-below-the-tensors": (forged("rank", 4), ["with adapter.json's rank 4; export the adapter again"]),
    "float16-tensors-forged": (forged(tensors=lambda w: {k: w[k].half() for k in w}), ["as torch.float16, where"]),
    "one-bfloat16-tensor-forged": (forged(tensors=lambda w: {**w, max(w): w[max(w)].bfloat16()}), ["as torch.bf"]),
    "dtype-claim-forged": (forged("dtype", "torch.float16"), ["records dtype 'torch.float16'"]),
}  # fmt: skip


@pytest.mark.parametrize("command", ["inspect", "merge"])
@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_adapter_is_refused_naming_what_changed(
    case: str, command: str, base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lit_psion.cli import main

    adapter = tmp_path / "adapter"
    shutil.copytree(exported, adapter)
    recorded = read_json(adapter / "adapter.json")
    tamper, messages = TAMPERED[case]
    tamper(adapter)
    capsys.readouterr()
    argv = ["adapter", "inspect", str(adapter)] if command == "inspect" else \
        ["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "merged")]  # fmt: skip
    assert main(argv) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(message in err[0] for message in messages), err
    if case.endswith("-edited"):  # the digests: the one recorded and the one the fields hash to
        assert recorded["metadata_sha256"] in err[0] and "its fields hash to" in err[0]
    if case == "tensor-byte-flipped":
        assert recorded["adapter_sha256"] in err[0] and sha256_file(adapter / "adapter.safetensors") in err[0]
    assert not (tmp_path / "merged").exists()


def test_an_untouched_export_verifies_and_its_digests_are_what_they_say(exported: Path) -> None:
    meta = read_json(exported / "adapter.json")
    assert meta["format_version"] == 2
    assert meta["metadata_sha256"] == sha256_json({k: v for k, v in meta.items() if k != "metadata_sha256"})
    assert meta["adapter_sha256"] == sha256_file(exported / "adapter.safetensors")
    with safe_open(exported / "adapter.safetensors", "pt") as handle:
        copy = json.loads(handle.metadata()["lit_psion.adapter"])
    assert copy == {k: v for k, v in meta.items() if k not in ("adapter_sha256", "metadata_sha256")}
    from lit_psion.adapters import load_adapter

    assert load_adapter(exported)[0] == meta


def _tree(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


OUTPUTS_INTO_A_RUN = [  # (command, given the base run, the tuned run and the exported adapter; what the line says)
    (lambda b, t, a: ["adapter", "export", str(t), "--out", str(t)], "is a run directory"),
    (lambda b, t, a: ["adapter", "export", str(t), "--out", str(t / "checkpoints")], "is inside run directory"),
    (lambda b, t, a: ["adapter", "merge", str(a), "--base", str(b), "--out", str(b)], "is a run directory"),
    (lambda b, t, a: ["adapter", "merge", str(a), "--base", str(b), "--out", str(b / "merged")], "is inside run"),
    (lambda b, t, a: ["adapter", "merge", str(a), "--base", str(b), "--out", str(b / "run.json")], "is a file"),
    (lambda b, t, a: ["compare", str(b), str(t), "--out", str(b / "dashboard")], "is inside run directory"),
    (lambda b, t, a: ["compare", str(b), "--out", str(t / "checkpoints" / "pointer.json")], "is a file"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "says"), OUTPUTS_INTO_A_RUN,
                         ids=["export into its run", "export into checkpoints", "merge into the base run",
                              "merge under the base run", "merge onto a file", "compare into a dashboard",
                              "compare onto a file"])  # fmt: skip
def test_an_output_directory_in_a_run_is_refused_and_the_runs_are_untouched(
    base: Path, tuned: Path, exported: Path, capsys: pytest.CaptureFixture, command: Callable, says: str
) -> None:
    """export --out RUN appended its receipt to the run's sealed chain (receipts verify then failed); merge --out BASE
    made the base run look like a merged model; compare --out RUN/checkpoints/step-N broke that checkpoint."""
    from lit_psion.cli import main

    before = (_tree(base), _tree(tuned))
    capsys.readouterr()
    assert main(command(base, tuned, exported)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert (_tree(base), _tree(tuned)) == before


def test_doctor_holds_a_runs_adapter_to_the_run_it_sits_in(base: Path, tuned: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """doctor said 'ok adapter/' for another run's adapter copied in: it checked the directory against itself."""
    from lit_psion.cli import main

    run = tmp_path / tuned.name
    shutil.copytree(tuned, run)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    with pytest.MonkeyPatch.context() as patch:  # given as ".": the run's own id is recorded, not ""
        patch.chdir(run)
        assert main(["adapter", "export", "."]) == 0
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0
    pointed = read_json(run / "checkpoints" / "pointer.json")["checkpoint"]
    assert "ok   adapter/: " in (out := capsys.readouterr().out) and f"and the run's {pointed}" in out, out
    steps = read_json(run / "run.json")["global_step"]
    write_latest(tmp_path, run.name)  # the copy is the latest run of its root: continue it
    assert fit(*adapter_args(base, tmp_path, "--model.init_args.targets", '["lm_head", "attn_qkv"]',
                             "--trainer.max_steps", str(steps + 2), "--ckpt_path", "last")) == 0  # as `tuned` trained
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0  # stale, not forged: it names the checkpoint it came from
    assert "export again for it" in capsys.readouterr().out
    other = tmp_path / "other"
    assert fit(*adapter_args(base, other, "--trainer.max_steps", "2", "--seed_everything", "5")) == 0
    other_run = other / read_latest(other)
    assert main(["adapter", "export", str(other_run)]) == 0
    shutil.rmtree(run / "adapter")
    shutil.copytree(other_run / "adapter", run / "adapter")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 4
    assert f"FAIL adapter/: exported from run {other_run.name!r}, not from this run" in capsys.readouterr().out


def test_a_base_whose_pointed_checkpoint_fails_is_refused(base: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The fine-tune used to print a warning and train on the base's older checkpoint instead."""
    copy = tmp_path / base.name
    shutil.copytree(base, copy)
    pointed = copy / "checkpoints" / read_json(copy / "checkpoints" / "pointer.json")["checkpoint"]
    data = bytearray((pointed / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (pointed / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert fit(*adapter_args(copy, tmp_path / "ft", "--trainer.max_steps", "1")) == 4
    assert f"{pointed.name} does not verify" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").glob("*/run.json"))


def test_an_adapter_resume_after_its_base_run_moved_on_says_so(base: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """It said 'another architecture or model setting', though no setting had changed."""
    moved = tmp_path / "base"
    shutil.copytree(base.parent, moved)
    moved_run = moved / base.name
    ft = tmp_path / "ft"
    assert fit(*adapter_args(moved_run, ft, "--trainer.max_steps", "2")) == 0
    steps = read_json(moved_run / "run.json")["global_step"]
    assert fit("--trainer.default_root_dir", str(moved), "--trainer.max_steps", str(steps + 3), "--ckpt_path",
               "last") == 0  # fmt: skip  (the base run continues: its pointer moves)
    capsys.readouterr()
    # A dropout changed as well, which is no part of the signature: it used to be named as the cause instead.
    assert fit(*adapter_args(moved_run, ft, "--trainer.max_steps", "4", "--ckpt_path", "last",
                             "--model.init_args.lora_dropout", "0.5")) == 4  # fmt: skip
    err = capsys.readouterr().err
    assert "the same settings: the base they name is another checkpoint now" in err and "lora_dropout" not in err


@pytest.mark.parametrize("why", ["held", "failed"])
def test_exporting_a_held_or_failed_run_warns(tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              why: str) -> None:  # fmt: skip
    """It exported, merged and sampled a diverged run's adapter without a word."""
    from lit_psion.cli import main

    run = tmp_path / tuned.name
    shutil.copytree(tuned, run)
    if why == "held":
        (run / "promotion.json").write_text(json.dumps({"decision": "hold", "reasons": ["no gain on held-out"]}))
    else:
        record = read_json(run / "run.json")
        record.update(status="failed", failure_class="diverged")
        (run / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["adapter", "export", str(run), "--out", str(tmp_path / "out")]) == 0
    said = "its promotion gate held it (no gain on held-out)" if why == "held" else "is failed (diverged)"
    assert "lit_psion: warning: " in (err := capsys.readouterr().err) and said in err, err


def test_a_base_of_another_decoder_family_is_refused_in_one_line(base: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A MosaicLM run records a decoder_config as DecoderLM does: as a base it passed every check and failed in
    load_state_dict (exit 1, a line of kilobytes), and `window init` asked for a tokenizer.json it never has."""
    from lit_psion.cli import main

    mosaic = tmp_path / "mosaic"
    small = ("--data.n_train", "20", "--data.n_val", "4", "--data.tokenizer_traces", "10", "--trainer.max_steps", "2",
             "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1")  # fmt: skip
    assert fit("--trainer.default_root_dir", str(mosaic), *small, config="fixtures/mosaic_tiny.yaml") == 0
    run = mosaic / read_latest(mosaic)
    loose = tmp_path / "loose"
    shutil.copytree(run / "checkpoints" / read_json(run / "checkpoints" / "pointer.json")["checkpoint"], loose)
    capsys.readouterr()
    for given, says in ((run, "): a MosaicLM run wrote it"), (loose, "): another model wrote it")):
        assert fit(*adapter_args(given, tmp_path / "ft", "--trainer.max_steps", "1", "--data.tokenizer_file",
                                 "null")) == 4  # fmt: skip  (a MOSAIC run has no tokenizer.json)
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert main(["window", "init", str(tmp_path / "program"), "--config", "configs/window_lora.yaml", "--base",
                 str(run)]) == 4  # fmt: skip
    assert "a MosaicLM run wrote it" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").glob("*/run.json"))


def test_an_adapter_run_whose_base_moved_is_told_where_to_point_and_resumes_from_there(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said the old path 'is neither a run directory nor a checkpoint directory'; the advice it gives works now."""
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(base.parent, here)
    ft = tmp_path / "ft"
    assert fit(*adapter_args(here / base.name, ft, "--trainer.max_steps", "2")) == 0
    here.rename(there)
    capsys.readouterr()
    tokenizer = ("--data.tokenizer_file", str(there / base.name / "tokenizer.json"))
    assert fit(*adapter_args(here / base.name, ft, "--trainer.max_steps", "4", "--ckpt_path", "last", *tokenizer)) == 4
    assert f"base checkpoint '{here / base.name}' does not exist; give the base run directory" in \
        capsys.readouterr().err  # fmt: skip
    assert fit(*adapter_args(there / base.name, ft, "--trainer.max_steps", "4", "--ckpt_path", "last")) == 0
    assert read_json(ft / read_latest(ft) / "run.json")["global_step"] == 4


class OwnDecoder(DecoderLM):
    """A user's DecoderLM subclass that changes only behaviour: its weights are a DecoderLM's."""


class OwnDecoderWithAHead(DecoderLM):
    """A user's subclass with weights of its own: no base for DecoderLM adapters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = torch.nn.Linear(4, 1)


@pytest.mark.parametrize(("cls", "exit_code"), [("OwnDecoder", 0), ("OwnDecoderWithAHead", 4)])
def test_a_user_decoder_subclass_is_a_base_by_its_weights(tmp_path: Path, capsys: pytest.CaptureFixture, cls: str,
                                                          exit_code: int) -> None:  # fmt: skip
    """A base is judged by the weights it holds, not by the class name its run records."""
    root = tmp_path / "base"
    assert fit("--model", f"{__name__}.{cls}", "--trainer.default_root_dir", str(root), "--trainer.max_steps",
               "2") == 0  # fmt: skip
    own = root / read_latest(root)
    capsys.readouterr()
    assert fit(*adapter_args(own, tmp_path / "ft", "--trainer.max_steps", "2")) == exit_code
    if exit_code:
        err = capsys.readouterr().err
        assert "does not hold a DecoderLM's weights (+probe.bias, +probe.weight)" in err, err
        assert f"a {cls} run wrote it" in err, err
