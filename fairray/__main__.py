import sys

from fairray.cli import main

sys.exit(main())
