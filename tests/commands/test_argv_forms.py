"""A nested setting set to null on the command line: jsonargparse read it as the text 'None' and refused it."""

from __future__ import annotations

import pytest
import yaml

from lit_psion.cli import main
from lit_psion.commands.argv_forms import nulls_as_mappings
from tests.helpers import TINY

NULLS = [
    (["--model.optimizer.decay_steps", "null"], ['--model.optimizer={"decay_steps": null}']),
    (["--model.init_args.optimizer.decay_steps=~"], ['--model.init_args.optimizer={"decay_steps": null}']),
    (["--trainer.strategy.policy.grad_norm_max=NULL", "--x"],
     ['--trainer.strategy.policy={"grad_norm_max": null}', "--x"]),
    (["--trainer.max_steps", "null"], ["--trainer.max_steps", "null"]),  # a setting of a root: read as null already
    (["--data.init_args.vocab_size=null"], ["--data.init_args.vocab_size=null"]),
    (["--trainer.logger.init_args.offline", "null"], ["--trainer.logger.init_args.offline", "null"]),
    (["--model.optimizer.decay_steps", "nullity"], ["--model.optimizer.decay_steps", "nullity"]),  # not a null
    (["--config", "null"], ["--config", "null"]),
    (["fit", "--model.optimizer.decay_steps"], ["fit", "--model.optimizer.decay_steps"]),  # no value: the parser says
]


@pytest.mark.parametrize(("argv", "rewritten"), NULLS, ids=[" ".join(argv) for argv, _ in NULLS])
def test_a_nested_null_is_given_as_a_mapping_of_its_parent(argv: list[str], rewritten: list[str]) -> None:
    assert nulls_as_mappings(argv) == rewritten


@pytest.mark.parametrize("null", ["--trainer.strategy.policy.grad_norm_max=null",
                                  "--trainer.strategy.init_args.policy.grad_norm_max=null"])  # fmt: skip
def test_a_null_clears_a_nested_setting_and_keeps_its_siblings(null: str, capsys: pytest.CaptureFixture) -> None:
    """``grad_norm_max: null`` is the overlay's own default, yet `--...grad_norm_max=null` was exit 2 ("'None' is
    not a float or null"): the only way to clear an earlier value on the command line. The decoder's decay_steps
    (an int or null) likewise."""
    args = ["fit", "--config", TINY, "--trainer.strategy", "transactional", "--trainer.strategy.policy.rollback_tol",
            "0.5", "--trainer.strategy.policy.grad_norm_max", "3", null, "--model.init_args.optimizer.decay_steps",
            "7", "--model.optimizer.decay_steps", "null", "--print_config"]  # fmt: skip
    assert main(args) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    policy = config["trainer"]["strategy"]["init_args"]["policy"]
    assert policy["grad_norm_max"] is None and policy["rollback_tol"] == 0.5
    assert config["model"]["init_args"]["optimizer"]["decay_steps"] is None


@pytest.mark.parametrize(("argv", "path"), [(["generate", "runs", "--prompt", ""], False),
                                            (["adapter", "merge", "a", "--base", "", "--out", "b"], True),
                                            (["doctor", ""], True)])  # fmt: skip
def test_an_empty_value_is_told_of_paths_only_where_a_path_is_taken(argv: list[str], path: bool,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """An empty --prompt was told "a path of '' is read as the current directory"."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("a path of '' is read as the current directory" in err) == path and "give one" in err, err
