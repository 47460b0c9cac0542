import sys

from bench.soak.cli import main

# The guard matters: spawned workers import this module as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
