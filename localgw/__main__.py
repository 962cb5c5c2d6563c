import sys

from localgw.cli import main

sys.exit(main())
