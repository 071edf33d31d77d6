import sys

from rglcd.cli import main

sys.exit(main())
