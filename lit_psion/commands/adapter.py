"""``python -m lit_psion adapter export|inspect|merge``: LoRA adapters as verified safetensors files."""

from __future__ import annotations

from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.core.errors import ConfigError
from lit_psion.core.layout import RunLayout, not_a_run


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion adapter")
    commands = parser.add_subparsers(dest="command", required=True)
    export_ = commands.add_parser("export", exit_on_error=False, help="write a run's adapter as safetensors")
    export_.add_argument("run_dir", type=Path)
    export_.add_argument("--out", type=Path, default=None, help="the directory to write it to (default: "
                         "RUN_DIR/adapter)")  # fmt: skip
    inspect = commands.add_parser("inspect", exit_on_error=False, help="verify an exported adapter, then print it")
    inspect.add_argument("adapter_dir", type=Path)
    merge_ = commands.add_parser("merge", exit_on_error=False, help="fold an adapter into its base")
    merge_.add_argument("adapter_dir", type=Path)
    merge_.add_argument("--base", type=Path, required=True, help="the base run directory or checkpoint directory")
    merge_.add_argument("--out", type=Path, required=True, help="the directory, outside any run, to write the "
                        "merged model")  # fmt: skip
    parsed = parser.parse_args(args)
    if parsed.command == "export" and not RunLayout.of(parsed.run_dir).is_run():  # said before torch is imported
        raise ConfigError(not_a_run(parsed.run_dir, "give an AdapterLM run"))
    from lit_psion.adapters import ADAPTER_FILE, META_FILE, export, load_adapter, merge  # imports torch

    if parsed.command == "export":
        print(f"adapter written to {export(parsed.run_dir, parsed.out)}")
    elif parsed.command == "inspect":
        meta, tensors = load_adapter(parsed.adapter_dir)
        for key in ("targets", "rank", "alpha", "dtype", "base_checkpoint_digest", "data_manifest_digest",
                    "adapter_sha256", "metadata_sha256"):  # fmt: skip
            print(f"{key:<24} {meta.get(key)}")
        print(f"{'tensors':<24} {len(tensors)} ({sum(t.numel() for t in tensors.values())} parameters, all finite)")
        print(f"{'verified':<24} {META_FILE} and {ADAPTER_FILE} bind each other")
    else:
        record = merge(parsed.adapter_dir, parsed.base, parsed.out)
        print(f"merged into {parsed.out / 'model.safetensors'}; max |logit difference| merged vs unmerged "
              f"{record['max_abs_logit_diff']:.3g} on the probe batch")  # fmt: skip
