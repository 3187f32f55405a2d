"""``python -m mmdisco.cli`` (and ``accelerate launch -m mmdisco.cli``) runs the CLI."""

from mmdisco.cli import main

if __name__ == "__main__":
    main()
