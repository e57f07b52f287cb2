"""``python -m deepfm`` runs the same command line as the ``deepfm`` console script."""

from deepfm.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
