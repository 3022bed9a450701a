import sys

from .demo.cli import main

if __name__ == "__main__":  # not when a worker process (Dask's spawn) imports it again
    sys.exit(main())
