"""`python -m lit_psion ...` entry point."""

from lit_psion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
