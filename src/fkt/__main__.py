import sys

from fkt.cli import main

sys.exit(main())
