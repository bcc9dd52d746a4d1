"""A model mismatch names the settings that differ, or says nothing it cannot back."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.callbacks.checkpoint import changed_model_settings, shared_settings

RUN = """model:
  class_path: lit_psion.models.DecoderLM
  init_args:
    decoder: {n_layer: 2, n_head: 2, d_model: 64, dropout: 0.1}
trainer: {max_steps: 6}
"""


def _checkpoint(tmp_path: Path, config: str | bytes | None) -> Path:
    step = tmp_path / "run" / "checkpoints" / "step-000006"
    step.mkdir(parents=True)
    if isinstance(config, str):
        (tmp_path / "run" / "config.yaml").write_text(config)
    elif isinstance(config, bytes):
        (tmp_path / "run" / "config.yaml").write_bytes(config)
    return step


def test_each_changed_model_setting_is_named_with_both_values(tmp_path: Path) -> None:
    given = RUN.replace("n_layer: 2", "n_layer: 3").replace("max_steps: 6", "max_steps: 60")
    assert changed_model_settings(_checkpoint(tmp_path, RUN), given) == (
        " (model.decoder.n_layer: 2 in the run's config.yaml, 3 here)"  # trainer settings are not the model's
    )


def test_a_setting_only_one_side_has_and_a_long_list_are_both_told(tmp_path: Path) -> None:
    given = RUN.replace("dropout: 0.1", "dropout: 0.0, bias: true").replace("n_head: 2", "n_head: 4")
    given = given.replace("d_model: 64", "d_model: 32").replace("n_layer: 2", "n_layer: 1")
    said = changed_model_settings(_checkpoint(tmp_path, RUN), given)
    assert said.startswith(" (model.decoder.bias: None in the run's config.yaml, True here; ")
    assert said.endswith("; 2 more)")


def test_only_the_settings_the_signature_is_made_of_are_named(tmp_path: Path) -> None:
    """A learning rate or a dropout cannot make two signatures differ; naming one hid the real cause."""
    recorded = RUN.replace("    decoder:", "    optimizer: {lr: 0.01}\n    decoder:")
    given = recorded.replace("lr: 0.01", "lr: 0.02").replace("n_layer: 2", "n_layer: 3")
    checkpoint = _checkpoint(tmp_path, recorded)
    assert changed_model_settings(checkpoint, given, ("decoder",)) == (
        " (model.decoder.n_layer: 2 in the run's config.yaml, 3 here)")
    assert changed_model_settings(checkpoint, given) == (  # a model that does not say: every setting that differs
        " (model.decoder.n_layer: 2 in the run's config.yaml, 3 here; model.optimizer.lr: 0.01 in the run's "
        "config.yaml, 0.02 here)")
    assert changed_model_settings(checkpoint, recorded.replace("lr: 0.01", "lr: 0.02"), ("decoder",)) == ""
    assert changed_model_settings(checkpoint, given.replace("DecoderLM", "MosaicLM"), ("decoder.n_head",)) == (
        " (model.class_path: 'lit_psion.models.DecoderLM' in the run's config.yaml, 'lit_psion.models.MosaicLM' "
        "here)")  # the class is always named; decoder.n_layer is not decoder.n_head


@pytest.mark.parametrize(
    ("recorded", "given"),
    [
        (None, RUN),  # the run's config.yaml is gone
        ("model: [unclosed", RUN),  # garbled
        (b"\xff\xfe not utf-8", RUN),
        ("- a list\n", RUN),  # YAML, but not a config
        (RUN, None),  # nothing given to compare (a Python-API fit)
        (RUN, RUN),  # the same settings: the difference is elsewhere, so nothing is claimed
    ],
    ids=["missing", "garbled", "not-utf8", "not-a-mapping", "nothing-given", "same"],
)
def test_nothing_is_claimed_when_the_settings_cannot_be_compared(
    tmp_path: Path, recorded: str | bytes | None, given: str | None
) -> None:
    assert changed_model_settings(_checkpoint(tmp_path, recorded), given) == ""


NODE = RUN.replace("trainer: {max_steps: 6}", """trainer:
  max_steps: 6
  default_root_dir: /mnt/node0/runs
""").replace("  init_args:\n", "  init_args:\n    base_checkpoint: /mnt/node0/runs/base/checkpoints/step-000010\n")


@pytest.mark.parametrize(
    ("edit", "differ"),
    [(("/mnt/node0/runs", "/mnt/node1/runs"), set()), (("max_steps: 6", "max_steps: 7"), set()),
     (("dropout: 0.1", "dropout: 0.0"), {"model.init_args.decoder.dropout"}),
     (("  init_args:\n", "  init_args:\n    optimizer: {lr: 0.1}\n"), {"model.init_args.optimizer.lr"})],
    ids=["paths, the base checkpoint's too", "trainer (compared as the trainer reads it)", "model", "optimizer"],
)  # fmt: skip
def test_ranks_share_the_model_settings_not_their_paths(edit: tuple[str, str], differ: set) -> None:
    """What every rank of one fit compares with rank 0 (a node given another lr would drift without a word)."""
    ours, theirs = shared_settings(NODE), shared_settings(NODE.replace(*edit))
    assert NODE.replace(*edit) != NODE
    assert {key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)} == differ


def test_shared_settings_of_no_config_or_a_broken_one_are_empty_alike() -> None:
    assert shared_settings(None) == shared_settings("{not: yaml") == shared_settings("[1]") == {}


@pytest.mark.parametrize(
    ("ours", "theirs", "differ"),
    [({"precision": "bf16"}, {"precision": "bf16-mixed"}, set()),
     ({"gradient_clip_val": 0}, {"gradient_clip_val": None}, set()),
     ({"max_steps": 5, "max_epochs": None}, {"max_steps": 5, "max_epochs": -1}, set()),
     ({"gradient_clip_val": 1.0}, {"gradient_clip_val": 0.5}, {"trainer.gradient_clip_val"}),
     ({"gradient_clip_val": 1.0}, {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"},
      {"trainer.gradient_clip_algorithm"}),
     ({"accumulate_grad_batches": 1}, {"accumulate_grad_batches": 2}, {"trainer.accumulate_grad_batches"}),
     ({"max_steps": 5}, {"max_steps": 6}, {"trainer.max_steps"}),
     ({"precision": "32"}, {"precision": "bf16-mixed"}, {"trainer.precision"})],
    ids=["bf16 spellings", "no clipping spellings", "no epoch limit spellings", "clip value", "clip algorithm",
         "accumulation", "steps", "precision"],
)  # fmt: skip
def test_ranks_share_the_trainer_settings_as_lightning_reads_them(ours: dict, theirs: dict, differ: set) -> None:
    import lightning as L

    from lit_psion.callbacks.checkpoint import trainer_settings

    def settings(given: dict) -> dict:
        return trainer_settings(L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **given))

    first, second = settings(ours), settings(theirs)
    assert {key for key in first.keys() | second.keys() if first.get(key) != second.get(key)} == differ


def test_a_subclass_that_does_not_say_what_it_signs_gets_every_difference_named() -> None:
    """An inherited list would hide the settings a user's subclass adds to its signature."""
    from lit_psion.core.contracts import signed_settings
    from lit_psion.models import DecoderLM

    class Mine(DecoderLM):
        pass

    assert signed_settings(DecoderLM()) == ("decoder",) and signed_settings(Mine()) is None
