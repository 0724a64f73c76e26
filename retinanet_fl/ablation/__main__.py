import sys

from .cli import main

try:
    sys.exit(main())
except KeyboardInterrupt:
    print(
        "Interrupted. Run the same command again to resume where the sweep stopped.",
        file=sys.stderr,
    )
    sys.exit(130)
