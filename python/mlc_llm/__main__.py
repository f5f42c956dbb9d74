"""`python -m mlc_llm ...`: the same command line as the `mlc_llm` script."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
