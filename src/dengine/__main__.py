"""`python -m dengine ...`: the same command line as the `dengine` script."""

from dengine.cli import main

if __name__ == "__main__":
    main()
