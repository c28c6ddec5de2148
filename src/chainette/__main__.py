"""``python -m chainette ...`` works like the ``chainette`` command."""

from chainette.cli import main

if __name__ == "__main__":
    main()
